"""Stage 1c: label a dataset by hand in a notebook (JupyterLab, classic Notebook, Colab) with ipywidgets.

    from t2idemo.labeling import Labeler
    Labeler("data/feedback", labeler="ana")      # as the last line of a cell: shows the labeler

It shows one image (upscaled with nearest neighbour, so the 32x32 pixels stay crisp), its prompt, Good /
Bad / Skip / Undo buttons and the progress ("37 / 200"). Every click is written to the label store (see
``t2idemo.label_store``) before the UI moves on; if the write fails, the UI says so and stays on the image.
Run the cell again later, or in another kernel, and it resumes at the first image this labeler has not
labelled. Several people can label the same dataset at once under their own names.

``GridLabeler("data/feedback", labeler="ana", grid=12)`` shows a screen of 12 images at once, each with its
prompt and a tick box: tick the good ones (or the bad ones), "Submit screen" labels the rest the other way and
saves the whole screen in one transaction; "Undo screen" takes the last screen back.

Needs ``pip install ipywidgets``. In Colab the custom widget manager is switched on automatically.
"""

from __future__ import annotations

import html
import io
import os
from itertools import islice

from PIL import Image

from .data import load_rows
from .label_store import LabelStore, default_store_path

BUTTONS = (  # (label, button text, ipywidgets button_style, icon)
    ("good", "Good", "success", "check"),
    ("bad", "Bad", "danger", "times"),
    ("skip", "Skip", "", "forward"),
)
MARKS = ("good", "bad")  # on a screen a person ticks the good ones or the bad ones; the rest get the other label


def _ipywidgets():
    """Import ipywidgets lazily (the rest of the kit runs without it) and enable Colab's widget manager."""
    try:
        import ipywidgets
    except ImportError as e:
        raise ImportError("t2idemo.labeling needs ipywidgets; install it with: pip install ipywidgets") from e
    try:
        from google.colab import output  # only importable inside Colab

        output.enable_custom_widget_manager()
    except ImportError:
        pass
    return ipywidgets


def png_bytes(path: str, size: int = 256) -> bytes:
    """An image file as PNG bytes, upscaled by a whole factor (about ``size`` px) with nearest neighbour."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = max(1, round(size / max(im.size)))
    buf = io.BytesIO()
    im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def screen_labels(file_names: list, marked, mark: str = "good") -> list:
    """One screen's (image, label) pairs: ``mark`` for the ``marked`` images of ``file_names``, the other label of
    MARKS for the rest; a ValueError naming a bad ``mark`` or a marked image that is not on the screen."""
    if mark not in MARKS:
        raise ValueError(f"mark={mark!r} is not allowed; use one of {MARKS}")
    stray = [f for f in marked if f not in file_names]
    if stray:
        raise ValueError(f"marked={stray!r} is not allowed; mark only images of the screen: {list(file_names)}")
    other = MARKS[1 - MARKS.index(mark)]
    return [(f, mark if f in marked else other) for f in dict.fromkeys(file_names)]


def _open_dataset(dataset_dir: str, store_path: str | None, labeler: str, size: int) -> tuple:
    """(rows, label store) of the dataset to label; a ValueError for a bad size, labeler or an empty dataset."""
    if not 64 <= size <= 1024:
        raise ValueError(f"size={size!r} is out of range; use 64 to 1024 pixels")
    rows = load_rows(dataset_dir, missing_ok=True)
    if not rows:
        raise ValueError(
            f"dataset_dir={dataset_dir!r} has no images yet; run "
            f"`python -m t2idemo generate --out {dataset_dir}` first"
        )
    store = LabelStore(store_path or default_store_path(dataset_dir))
    store.add_many([], labeler)  # validates the labeler name now rather than at the first click
    return rows, store


def unlabelled(rows: list, done, start: int = 0):
    """Indices of the rows at or after ``start`` (wrapping round) whose image is not in ``done``."""
    return (i % len(rows) for i in range(start, start + len(rows)) if rows[i % len(rows)]["file_name"] not in done)


class Labeler:
    """An ipywidgets labeler for the dataset in ``dataset_dir``.

    ``store_path``: the label store ("" or None: DATASET/labels.sqlite); ``labeler``: the name this person's
    labels are stored under; ``size``: displayed image size in px (64 - 1024).
    Use ``.widget`` (or ``.display()``, or make the object the last expression of a cell).
    """

    def __init__(self, dataset_dir: str, store_path: str | None = None, labeler: str = "me", size: int = 256):
        widgets = _ipywidgets()
        self.dataset_dir, self.labeler, self.size = dataset_dir, labeler, size
        self.rows, self.store = _open_dataset(dataset_dir, store_path, labeler, size)
        self.position = {r["file_name"]: i for i, r in enumerate(self.rows)}

        self.progress = widgets.Label()
        self.bar = widgets.IntProgress(min=0, max=len(self.rows))
        self.image = widgets.Image(format="png", width=size, height=size)
        self.prompt = widgets.HTML()
        self.status = widgets.HTML()
        self.buttons = {}
        for label, text, style, icon in BUTTONS:
            b = widgets.Button(description=text, button_style=style, icon=icon, tooltip=f"label this image {label}")
            b.on_click(lambda _, label=label: self.click(label))
            self.buttons[label] = b
        self.buttons["undo"] = widgets.Button(
            description="Undo", button_style="warning", icon="undo", tooltip="take back your last click"
        )
        self.buttons["undo"].on_click(lambda _: self.undo())
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.bar, self.progress]),
                self.image,
                self.prompt,
                widgets.HBox(list(self.buttons.values())),
                self.status,
            ]
        )
        self.index = self.next_unlabelled(0)
        self.show()

    # ------------------------------------------------------------------------- logic (driven by the buttons)
    def next_unlabelled(self, start: int) -> int | None:
        """The first row at or after ``start`` (wrapping round) that this labeler has not labelled."""
        return next(unlabelled(self.rows, self.store.labels(self.labeler), start), None)

    def click(self, label: str) -> None:
        """Store ``label`` for the shown image, then move on. Nothing moves unless the store took it."""
        if self.index is None:
            return
        image_id = self.rows[self.index]["file_name"]
        try:
            self.store.add(image_id, label, self.labeler)  # on disk when this returns
        except Exception as e:  # keep the image on screen: the click is not saved
            self.show(f"<b style='color:#c62828'>not saved ({html.escape(str(e))}); click again</b>")
            return
        self.index = self.next_unlabelled(self.index + 1)
        self.show(f"saved <b>{label}</b> for {image_id}")

    def undo(self) -> None:
        """Take back this labeler's last click and go back to that image."""
        try:
            image_id = self.store.undo(self.labeler)
        except Exception as e:
            self.show(f"<b style='color:#c62828'>undo failed ({html.escape(str(e))})</b>")
            return
        if image_id is None:
            self.show("nothing to undo")
        elif image_id in self.position:
            self.index = self.position[image_id]
            self.show(f"undid your last click on {image_id}")
        else:
            self.show(f"undid your last click on {image_id} (not in this dataset)")

    def show(self, status: str = "") -> None:
        """Bring every widget in line with ``self.index`` and the store."""
        done = len(self.position.keys() & self.store.labels(self.labeler).keys())
        self.progress.value = f"{done} / {len(self.rows)}"
        self.bar.value = done
        finished = self.index is None
        for label, _, _, _ in BUTTONS:
            self.buttons[label].disabled = finished
        if finished:
            self.image.value = b""
            self.prompt.value = f"<h3>All {len(self.rows)} images are labelled. Thank you!</h3>"
        else:
            row = self.rows[self.index]
            self.image.value = png_bytes(os.path.join(self.dataset_dir, row["file_name"]), self.size)
            current = self.store.get(row["file_name"], self.labeler)
            note = f" &nbsp; <i>(your label: {current})</i>" if current else ""
            self.prompt.value = (
                f"<h3 style='margin:4px 0'>{html.escape(row['prompt'])}</h3>"
                f"<small>{html.escape(row['file_name'])}</small>{note}"
            )
        self.status.value = status

    # ------------------------------------------------------------------------- notebook display
    def display(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        self.widget.close()
        self.store.close()


class GridLabeler:
    """An ipywidgets grid labeler: a screen of ``grid`` images (8 - 16) of ``dataset_dir`` that this labeler has not
    labelled, each with its prompt and a tick box. The person ticks the good ones (or, with the toggle, the bad
    ones) and presses "Submit screen": the ticked ones get that label, the rest the other, all written in one
    transaction before the next screen shows. "Undo screen" takes the last screen back. Arguments as ``Labeler``'s;
    ``size``: displayed image size in px (64 - 1024).
    """

    def __init__(
        self, dataset_dir: str, store_path: str | None = None, labeler: str = "me", grid: int = 12, size: int = 128
    ):
        widgets = _ipywidgets()
        if isinstance(grid, bool) or not isinstance(grid, int) or not 8 <= grid <= 16:
            raise ValueError(f"grid={grid!r} is out of range; use 8 to 16 images on a screen")
        self.dataset_dir, self.labeler, self.grid, self.size = dataset_dir, labeler, grid, size
        self.rows, self.store = _open_dataset(dataset_dir, store_path, labeler, size)
        self.mark = widgets.ToggleButtons(
            options=[("I mark the good ones", "good"), ("I mark the bad ones", "bad")],
            value="good",
            tooltips=["the rest get bad", "the rest get good"],
        )
        self.images = [widgets.Image(format="png", width=size, height=size) for _ in range(grid)]
        self.ticks = [
            widgets.Checkbox(value=False, indent=False, layout=widgets.Layout(width=f"{size + 8}px"))
            for _ in range(grid)
        ]
        self.cells = [widgets.VBox([image, tick]) for image, tick in zip(self.images, self.ticks)]
        self.buttons = {
            "submit": widgets.Button(description="Submit screen", button_style="success", icon="check"),
            "undo": widgets.Button(description="Undo screen", button_style="warning", icon="undo"),
        }
        self.buttons["submit"].on_click(lambda _: self.submit())
        self.buttons["undo"].on_click(lambda _: self.undo())
        self.progress, self.bar = widgets.Label(), widgets.IntProgress(min=0, max=len(self.rows))
        self.status = widgets.HTML()
        columns = widgets.Layout(grid_template_columns=f"repeat(4, {size + 16}px)")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.bar, self.progress]),
                self.mark,
                widgets.GridBox(self.cells, layout=columns),
                widgets.HBox(list(self.buttons.values())),
                self.status,
            ]
        )
        self.screen = self.next_screen()
        self.show()

    # ------------------------------------------------------------------------- logic (driven by the buttons)
    def next_screen(self) -> list:
        """The file names of the first ``grid`` images this labeler has not labelled."""
        todo = unlabelled(self.rows, self.store.labels(self.labeler))
        return [self.rows[i]["file_name"] for i in islice(todo, self.grid)]

    def submit(self) -> None:
        """Save the screen (ticked: the toggle's label, the rest: the other) in one transaction, then the next
        screen. Nothing moves unless the store took the whole screen."""
        if not self.screen:
            return
        marked = [name for name, tick in zip(self.screen, self.ticks) if tick.value]
        items = screen_labels(self.screen, marked, self.mark.value)
        try:
            self.store.add_many(items, self.labeler, screen=True)  # on disk when this returns
        except Exception as e:  # keep the screen and its ticks: nothing is saved
            self.status.value = f"<b style='color:#c62828'>not saved ({html.escape(str(e))}); submit again</b>"
            return
        good = sum(label == "good" for _, label in items)
        self.screen = self.next_screen()
        self.show(f"saved the screen: <b>{good} good, {len(items) - good} bad</b>")

    def undo(self) -> None:
        """Take back this labeler's last screen (or last single click); its images come back on the screen."""
        try:
            taken = self.store.undo_screen(self.labeler)
        except Exception as e:
            self.status.value = f"<b style='color:#c62828'>undo failed ({html.escape(str(e))})</b>"
            return
        self.screen = self.next_screen()
        self.show(f"took back {len(taken)} label{'s' * (len(taken) != 1)}" if taken else "nothing to undo")

    def show(self, status: str = "") -> None:
        """Bring every widget in line with ``self.screen`` and the store; cells past the screen's end are hidden."""
        done = len({r["file_name"] for r in self.rows} & self.store.labels(self.labeler).keys())
        self.progress.value, self.bar.value = f"{done} / {len(self.rows)}", done
        prompts = {r["file_name"]: r["prompt"] for r in self.rows}
        for k, (cell, image, tick) in enumerate(zip(self.cells, self.images, self.ticks)):
            cell.layout.display = "" if k < len(self.screen) else "none"
            tick.value = False
            if k < len(self.screen):
                image.value = png_bytes(os.path.join(self.dataset_dir, self.screen[k]), self.size)
                tick.description = prompts[self.screen[k]]
        self.buttons["submit"].disabled = not self.screen
        if not self.screen:
            status += f"<h3>All {len(self.rows)} images are labelled. Thank you!</h3>"
        self.status.value = status

    # ------------------------------------------------------------------------- notebook display
    display = Labeler.display
    _repr_mimebundle_ = Labeler._repr_mimebundle_
    close = Labeler.close
