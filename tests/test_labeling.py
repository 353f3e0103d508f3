"""The notebook labeler, driven from pytest with button.click() (no browser or kernel needed)."""

import io
import sqlite3
import sys
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from t2idemo.label_store import LabelStore  # noqa: E402
from t2idemo.labeling import GridLabeler, Labeler  # noqa: E402


def shown(lab):
    """The file name of the image on screen (None when done)."""
    return None if lab.index is None else lab.rows[lab.index]["file_name"]


def test_click_undo_resume_and_finish(render_dataset):
    d, rows = render_dataset
    names = [r["file_name"] for r in rows]
    lab = Labeler(d, labeler="ana")
    assert lab.progress.value == "0 / 6" and shown(lab) == names[0]
    assert rows[0]["prompt"] in lab.prompt.value

    lab.buttons["good"].click()
    assert LabelStore(lab.store.path).get(names[0], "ana") == "good"  # on disk, seen by another connection
    assert lab.progress.value == "1 / 6" and shown(lab) == names[1]
    lab.buttons["bad"].click()
    lab.buttons["skip"].click()
    assert lab.store.labels("ana") == {names[0]: "good", names[1]: "bad", names[2]: "skip"}
    assert lab.progress.value == "3 / 6" and lab.bar.value == 3 and shown(lab) == names[3]

    lab.buttons["undo"].click()  # back to image 2, its label gone
    assert shown(lab) == names[2] and lab.store.get(names[2], "ana") is None and lab.progress.value == "2 / 6"
    lab.buttons["good"].click()
    assert lab.store.get(names[2], "ana") == "good" and shown(lab) == names[3]

    # a new session (another kernel) resumes at the first image ana has not labelled
    lab2 = Labeler(d, labeler="ana")
    assert shown(lab2) == names[3] and lab2.progress.value == "3 / 6"
    assert shown(Labeler(d, labeler="ben")) == names[0]  # every labeler has their own progress
    for _ in range(3):
        lab2.buttons["bad"].click()
    assert shown(lab2) is None and lab2.progress.value == "6 / 6"
    assert all(lab2.buttons[k].disabled for k in ("good", "bad", "skip")) and not lab2.buttons["undo"].disabled
    assert "All 6 images are labelled" in lab2.prompt.value
    lab2.buttons["good"].click()  # disabled in the browser; a stray call changes nothing
    assert lab2.store.count("ana") == 6
    lab2.buttons["undo"].click()  # undo from the finished screen reopens the last image
    assert shown(lab2) == names[5] and not lab2.buttons["good"].disabled


def test_undo_with_nothing_to_undo(render_dataset):
    d, _ = render_dataset
    lab = Labeler(d)
    lab.buttons["undo"].click()
    assert "nothing to undo" in lab.status.value and lab.index == 0


def test_a_failed_write_keeps_the_image(render_dataset, monkeypatch):
    d, rows = render_dataset
    lab = Labeler(d)

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(lab.store, "add", broken)
    lab.buttons["good"].click()
    assert (
        shown(lab) == rows[0]["file_name"]
        and "not saved" in lab.status.value
        and "database is locked" in lab.status.value
    )
    assert lab.progress.value == "0 / 6"
    monkeypatch.undo()
    lab.buttons["good"].click()  # clicking again works
    assert lab.store.get(rows[0]["file_name"]) == "good" and shown(lab) == rows[1]["file_name"]


def test_image_is_upscaled_crisply(render_dataset):
    d, rows = render_dataset
    lab = Labeler(d, size=256)
    big = np.asarray(Image.open(io.BytesIO(lab.image.value)).convert("RGB"))
    small = np.asarray(Image.open(f"{d}/{rows[0]['file_name']}").convert("RGB"))
    assert big.shape == (256, 256, 3)
    assert (big == small.repeat(8, axis=0).repeat(8, axis=1)).all()  # nearest neighbour: 8x8 blocks


def test_bad_arguments(render_dataset, tmp_path):
    d, _ = render_dataset
    with pytest.raises(ValueError, match="size=10 is out of range"):
        Labeler(d, size=10)
    with pytest.raises(ValueError, match="labeler='' is not allowed"):
        Labeler(d, labeler="")
    with pytest.raises(ValueError, match="has no images yet"):
        Labeler(str(tmp_path / "empty"))


def test_missing_ipywidgets_names_the_install_command(render_dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match="pip install ipywidgets"):
        Labeler(render_dataset[0])


def test_colab_custom_widget_manager_is_enabled(render_dataset, monkeypatch):
    calls = []
    google, colab, output = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.output"))
    output.enable_custom_widget_manager = lambda: calls.append(1)
    colab.output, google.colab = output, colab
    for name, module in (("google", google), ("google.colab", colab), ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    Labeler(render_dataset[0])
    assert calls == [1]


# ----------------------------------------------------------------------------- the grid labeler
def test_grid_submits_a_screen_at_once_and_undoes_it_whole(render_dataset):
    d, rows = render_dataset
    names = [r["file_name"] for r in rows]
    grid = GridLabeler(d, labeler="ana", grid=8)
    assert grid.screen == names and grid.progress.value == "0 / 6"  # 6 images: the last two cells are hidden
    assert [t.description for t in grid.ticks[:6]] == [r["prompt"] for r in rows]
    assert [c.layout.display for c in grid.cells] == [""] * 6 + ["none"] * 2
    grid.mark.value = "bad"
    grid.ticks[1].value = grid.ticks[4].value = True
    grid.buttons["submit"].click()
    expected = {n: "bad" if k in (1, 4) else "good" for k, n in enumerate(names)}
    assert LabelStore(grid.store.path).labels("ana") == expected  # on disk, seen by another connection
    assert "4 good, 2 bad" in grid.status.value and "All 6 images are labelled" in grid.status.value
    assert grid.screen == [] and grid.buttons["submit"].disabled and grid.progress.value == "6 / 6"
    Labeler(d, labeler="ben").buttons["good"].click()  # another labeler's click is not part of ana's screen
    grid.buttons["undo"].click()  # one undo takes back the whole screen
    assert grid.store.labels("ana") == {} and grid.store.labels("ben") == {names[0]: "good"}
    assert "took back 6 labels" in grid.status.value and grid.screen == names
    assert not grid.ticks[1].value
    grid.ticks[0].value = True  # the toggle says bad: the first is bad, the rest good
    grid.buttons["submit"].click()
    assert grid.store.labels("ana") == {n: "bad" if k == 0 else "good" for k, n in enumerate(names)}
    lab = Labeler(d, labeler="ana")  # the single view's undo takes the screen back too
    lab.buttons["undo"].click()
    assert lab.store.labels("ana") == {} and shown(lab) == names[0]
    assert GridLabeler(d, labeler="ana", grid=8).screen == names  # a new session resumes


def test_grid_with_a_failed_write_keeps_the_screen_and_its_ticks(render_dataset, monkeypatch):
    d, rows = render_dataset
    grid = GridLabeler(d, grid=8)
    grid.ticks[2].value = True

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(grid.store, "add_many", broken)
    grid.buttons["submit"].click()
    assert "not saved (database is locked)" in grid.status.value and grid.ticks[2].value and grid.screen
    monkeypatch.undo()
    grid.buttons["submit"].click()
    assert grid.store.labels("me")[rows[2]["file_name"]] == "good" and grid.store.count("me") == 6


def test_grid_bad_arguments(render_dataset):
    d, _ = render_dataset
    for bad in (7, 17, 12.5):
        with pytest.raises(ValueError, match=f"grid={bad!r} is out of range; use 8 to 16"):
            GridLabeler(d, grid=bad)
    with pytest.raises(ValueError, match="size=10 is out of range"):
        GridLabeler(d, size=10)
    with pytest.raises(ValueError, match="labeler='majority' is reserved"):
        GridLabeler(d, labeler="majority")
