"""The Gradio app (app.py): its handlers in-process, then the real page in headless Chromium.

The browser tests drive Debian's chromium (/usr/bin/chromium) through Playwright, with no browser download;
they skip, saying why, when either is missing. The app runs as `python app.py` in a subprocess, on the base
model for both sides and a reward model trained here in seconds (so the tests do not depend on which aligned
model is shipped); `test_defaults_are_the_shipped_models` checks the shipped defaults. Its
Share tab pushes to FakeHub (tests/test_hub.py), never to the real Hub.
"""

import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import make_render_dataset
from PIL import Image
from test_hub import TOKEN, FakeHub

import app as t2iapp
from t2idemo import world
from t2idemo.data import load_rows
from t2idemo.generate import BASE_MODEL, DEFAULT_STEPS
from t2idemo.label_store import LabelStore, default_store_path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
browser_test = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) or importlib.util.find_spec("playwright") is None,
    reason=f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install -y chromium) and Playwright "
    f"(pip install playwright; no `playwright install` needed)",
)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A reward model on the shipped tiny CLIP, trained for a few epochs on 16 renders labelled by the judge."""
    from t2idemo.reward import RewardConfig
    from t2idemo.reward_train import train

    root = tmp_path_factory.mktemp("reward")
    rng, rows = random.Random(0), []
    pairs = world.all_prompts(unseen=False)
    os.makedirs(root / "data")
    for prompt, meta in rng.sample(pairs, 8):  # per prompt: a render of it and a render of another prompt
        for drawn in (meta, rng.choice(pairs)[1]):
            name = f"{len(rows):05d}.png"
            world.render_prompt(drawn, rng)[0].save(root / "data" / name)
            rows.append({"file_name": name, "prompt": prompt, **meta})
    with open(root / "data" / "metadata.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    train(
        RewardConfig(
            data=str(root / "data"),
            labels="judge",
            run=str(root / "run"),
            max_epochs=5,
            patience=2,
            batch=16,
            val_frac=0.25,
            device="cpu",
        )
    )
    return str(root / "run")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A labelling set of 8 renders (4 prompts x 2), as `python -m t2idemo generate` lays it out."""
    d = str(tmp_path_factory.mktemp("labelling") / "data")
    make_render_dataset(d, n_prompts=4, per_prompt=2)
    return d


@pytest.fixture(scope="module")
def the_app(reward_dir, data_dir, tmp_path_factory):
    """The app's handlers in this process (base model on both sides), labelling ``data_dir``."""
    return t2iapp.App(
        t2iapp.AppConfig(
            aligned=BASE_MODEL,
            reward=reward_dir,
            data=data_dir,
            share_shipped=True,
            workdir=str(tmp_path_factory.mktemp("work")),
        )
    )


@pytest.fixture(scope="module")
def drawing_app(reward_dir, tmp_path_factory):
    """The app as on a Space: no --data, so it labels what its Draw button draws; small tunes."""
    return t2iapp.App(
        t2iapp.AppConfig(
            aligned=BASE_MODEL,
            reward=reward_dir,
            workdir=str(tmp_path_factory.mktemp("space")),
            loop=t2iapp.LoopConfig(train_steps=3, unlabelled_per_prompt=0, eval_images=8),
        )
    )


# ----------------------------------------------------------------------------- config and input checks
def test_missing_models_fail_naming_the_flag(tmp_path, reward_dir, monkeypatch):
    with pytest.raises(
        ValueError, match=r"--aligned '.*nowhere': is not a StableDiffusionPipeline folder .*--aligned PATH"
    ):
        t2iapp.AppConfig(aligned=str(tmp_path / "nowhere"), reward=reward_dir)
    with pytest.raises(ValueError, match=r"--reward '.*': is not a reward model folder \(no reward_config.json\)"):
        t2iapp.AppConfig(aligned=BASE_MODEL, reward=str(tmp_path))
    with pytest.raises(ValueError, match=r"--base '.*nowhere'"):
        t2iapp.AppConfig(base=str(tmp_path / "nowhere"), aligned=BASE_MODEL, reward=reward_dir)
    with pytest.raises(ValueError, match=r"--data '.*' holds no metadata.jsonl"):
        t2iapp.AppConfig(aligned=BASE_MODEL, reward=reward_dir, data=str(tmp_path))
    with pytest.raises(ValueError, match=r"port=0 is out of range; use an integer from 1 to 65535"):
        t2iapp.AppConfig(aligned=BASE_MODEL, reward=reward_dir, port=0)
    # a default asset that is not shipped yet says so, and names the flag that replaces it
    monkeypatch.setattr(t2iapp, "ALIGNED_MODEL", str(tmp_path / "tiny-sd-aligned"))
    with pytest.raises(ValueError, match=r"--aligned '.*tiny-sd-aligned': the default, .* is not shipped yet"):
        t2iapp.AppConfig(aligned=str(tmp_path / "tiny-sd-aligned"), reward=reward_dir)
    t2iapp.AppConfig(aligned=BASE_MODEL, reward=reward_dir)  # a missing default --data is fine: Label says what to do


def test_defaults_are_the_shipped_models():
    """`python app.py` with no flags starts on the shipped base, aligned and reward models."""
    from t2idemo.reward import load_reward_fn

    cfg = t2iapp.AppConfig()
    assert os.path.isfile(os.path.join(cfg.aligned, "model_index.json"))
    scores = load_reward_fn(cfg.reward)(
        [world.render_prompt(world.parse_prompt("two red circles on sky"), random.Random(0))[0]],
        ["two red circles on sky"],
    )
    assert scores.shape == (1,) and 0 <= float(scores[0]) <= 1


def test_cli_exits_with_the_message(tmp_path):
    r = subprocess.run(
        [sys.executable, "app.py", "--aligned", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(t2iapp.__file__),
    )
    assert r.returncode == 2 and "--aligned" in r.stderr and "nowhere" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("", 0, 15, 5.0, 4), "prompt is empty"),
        (("   ", 0, 15, 5.0, 4), "prompt is empty"),
        (("two red dogs", 0, 15, 5.0, 4), "word 'dogs' is not in the shapes world's vocabulary"),
        (("two circles", 0, 0, 5.0, 4), r"sample_steps=0 is out of range; use an integer from 1 to 100"),
        (("two circles", 0, 101, 5.0, 4), r"sample_steps=101 is out of range"),
        (("two circles", 0, None, 5.0, 4), r"sample_steps is empty"),
        (("two circles", 0, 2.5, 5.0, 4), r"sample_steps=2.5 is not allowed; use an integer from 1 to 100"),
        (("two circles", 0, "many", 5.0, 4), r"sample_steps='many' is not allowed"),
        (("two circles", 0, 15, float("nan"), 4), r"guidance=nan is not allowed; use a number from 0 to 20"),
        (("two circles", -1, 15, 5.0, 4), r"seed=-1 is out of range"),
        (("two circles", 0, 15, 25.0, 4), r"guidance=25.0 is out of range; use a number from 0 to 20"),
        (("two circles", 0, 15, 5.0, 0), r"images_per_model=0 is out of range; use an integer from 1 to 16"),
        (("two circles " * 1000, 0, 15, 5.0, 4), r"prompt is 11999 characters long; use at most 200"),
        (("zwei rote kreise ✓", 0, 15, 5.0, 4), r"word 'zwei' is not in the shapes world's vocabulary"),
    ],
)
def test_compare_rejects_bad_input_naming_the_argument(the_app, args, message):
    with pytest.raises(ValueError, match=message):
        the_app.compare(*args)


def test_examples_cover_every_category_typical_atypical_and_unseen():
    examples = t2iapp.example_prompts()
    assert len(examples) == 3 * len(world.CATEGORIES)
    for prompt, label in examples:
        meta = world.parse_prompt(prompt)
        assert label.startswith(meta["category"]) and ("unseen" in label) == meta["unseen"]
        assert (" typical" in label) == world.is_typical(meta) and ("atypical" in label) == (
            not world.is_typical(meta)
        )


# ----------------------------------------------------------------------------- handlers, in-process
def test_compare_draws_both_models_from_the_same_seeds(the_app):
    base, aligned, mine, summary = the_app.compare("  three  purple circles on grass ", 7, 6, 5.0, 3)
    assert mine == [] and "train your own model in the Train tab" in summary
    assert len(base) == len(aligned) == 3
    for (b, b_cap), (a, a_cap), _seed in zip(base, aligned, (7, 8, 9)):
        assert b.size == (128, 128) and re.fullmatch(r"(✓ good|✗ .+) · r [01]\.\d\d", b_cap)
        assert np.array_equal(np.asarray(b), np.asarray(a)) and b_cap == a_cap  # same model, same seed: same image
    assert "three purple circles on grass" in summary and "| base |" in summary and "| aligned |" in summary
    assert "**unseen**" in summary  # (3, purple, grass) is a held-out triple
    cap = t2iapp.caption(
        {
            "pred": {"count": 3, "color": "red", "shape": "circle", "scene": "snow"},
            "correct": {"count": False, "color": True, "shape": True, "scene": False},
            "good": False,
        },
        world.parse_prompt("two red circles"),
        0.413,
    )
    assert cap == "✗ count 3 · r 0.41"  # the scene was not asked for, so it is not blamed


def test_the_compare_benchmark_times_each_run(the_app):
    """`python -m t2idemo benchmarks app --runs N` (the README's latency figure) times N Compare calls of the app's
    backend; the figure is a script's output, not a unit test's threshold."""
    from t2idemo.benchmarks import app_latency

    times = app_latency(the_app, 2)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_the_visitor_benchmark_times_each_step_of_the_loop(reward_dir, tmp_path):
    """`python -m t2idemo benchmarks app --visitor` (the guide's table of a visitor's steps) runs Draw, How did I do?,
    Train, Fine-tune and Compare through the app's backend, the judge labelling, and times each."""
    from t2idemo.backend import Backend
    from t2idemo.benchmarks import app_visitor
    from t2idemo.loop import LoopConfig

    backend = Backend(
        BASE_MODEL,
        BASE_MODEL,
        reward_dir,
        str(tmp_path),
        loop=LoopConfig(tune_batch=4, unlabelled_per_prompt=1, unlabelled_split="labelled", eval_images=4),
    )
    r = app_visitor(backend, 12, 2)
    backend.store.close()
    assert all(r[k] > 0 for k in ("draw_s", "agreement_s", "reward_s", "tune_s", "compare_s"))
    assert len(load_rows(backend.label_dir)) == 12 and r["reward"]["good"] + r["reward"]["bad"] == 12
    assert set(r["eval"]) == {"base", "yours"} and r["eval"]["yours"]["n"] == 4


def test_label_handlers_share_the_notebooks_store(the_app, data_dir):
    names = [r["file_name"] for r in the_app.rows]
    with pytest.raises(ValueError, match="name is empty"):
        the_app.label_start("  ")
    with pytest.raises(ValueError, match="name='majority' is reserved"):
        the_app.label_start("majority")
    with pytest.raises(ValueError, match="press Start"):
        the_app.label_click("good", {"labeler": None, "index": None})
    *_, state = the_app.label_start("zoe")
    assert state["labeler"] == "zoe" and state["index"] == 0 and len(state["sid"]) == 16
    *_, state = the_app.label_click("good", state)
    *_, state = the_app.label_click("bad", state)
    image, text, progress, status, state = the_app.label_undo(state)
    assert state["index"] == 1 and "took back" in status and names[1] in text
    with LabelStore(default_store_path(data_dir)) as other:  # another connection (a notebook) sees the clicks
        assert other.labels("zoe") == {names[0]: "good"}
        other.add_many([(n, "skip") for n in names[2:]], "zoe")  # ...and the app sees the notebook's
    *_, state = the_app.label_click("good", state)
    image, text, progress, status, state = the_app.label_view(state)
    assert state["index"] is None and image is None and "All 8 images are labelled" in text
    assert "8 / 8" in progress


def test_grid_saves_a_screen_at_once_and_undo_takes_it_back_whole(the_app, data_dir):
    """The grid view: tick the bad ones of a screen, submit: every label on disk in one transaction; one Undo screen
    takes back the whole screen, this labeler's only."""
    names = [r["file_name"] for r in the_app.rows]
    assert [r["file_name"] for r in the_app.label_screen("yan", 6, 4)] == names[6:] + names[:2]  # wraps round
    for call, message in [
        (
            lambda: the_app.label_screen("yan", 0, 0),
            "images_per_screen=0 is out of range; use an integer from 1 to 16",
        ),
        (lambda: the_app.label_screen("yan", 99), "start=99 is not allowed; use a row number from 0 to 7"),
        (lambda: the_app.save_screen("yan", names, [], "meh"), r"mark='meh' is not allowed; use one of \('good', "),
        (lambda: the_app.save_screen("yan", ["nope.png"], []), r"file_names=\['nope.png'\] is not allowed"),
        (lambda: the_app.save_screen("yan", names[:2], names[3:4]), r"marked=\['00003.png'\] is not allowed"),
        (lambda: the_app.save_screen("majority", names, []), "name='majority' is reserved"),
        (lambda: the_app.grid_submit({"labeler": None}, "good"), "press Start"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    cells, *_, status, state = the_app.grid_view({})
    assert cells == [] and "press Start" in status
    *_, state = the_app.label_start("yan", state)
    cells, progress, status, state = the_app.grid_view(state)
    assert [p for _, p in cells] == [r["prompt"] for r in the_app.rows] and state["screen"] == names
    assert cells[0][0].size == (128, 128) and "0 / 8** labelled by yan" in progress
    ticked = [k in (1, 4) for k in range(8)]
    cells, progress, status, state = the_app.grid_submit(state, "bad", *ticked)
    assert "saved the screen: **6 good, 2 bad**" in status and cells == [] and "All 8 images" in status
    with LabelStore(default_store_path(data_dir)) as other:  # on disk: another connection sees the whole screen
        assert other.labels("yan") == {n: "bad" if k in (1, 4) else "good" for k, n in enumerate(names)}
        zoe = other.labels("zoe")
    assert the_app.label_refresh(state)[-1]["index"] is None  # the single view moves on too: all done
    cells, progress, status, state = the_app.grid_undo(state)
    assert "took back your last screen (8 images)" in status and len(cells) == 8
    assert the_app.store.labels("yan") == {} and the_app.store.labels("zoe") == zoe
    *_, status, state = the_app.grid_undo(state)
    assert "nothing to undo" in status
    state = the_app.grid_submit(state, "good", True)[-1]  # tick the good ones: the first is good, the rest bad
    assert the_app.store.labels("yan") == {n: "good" if k == 0 else "bad" for k, n in enumerate(names)}
    image, text, *_, state = the_app.label_undo(state)  # the single view's Undo takes the screen back too
    assert the_app.store.labels("yan") == {} and state["index"] == 0 and names[0] in text


def test_a_second_store_in_the_apps_process_leaves_its_later_labels_on_disk(the_app, data_dir):
    """A push or a reward training opens the store again inside the app's process; when another process then reads
    and closes it, the app's later clicks (here an Undo screen) must still reach the file. Until issue 41's fix
    LabelStore read the file's header with open(): its close dropped the app's SQLite locks, the reader's close then
    deleted the write-ahead log under the app, and every later click of the app was lost."""
    names, store = [r["file_name"] for r in the_app.rows], default_store_path(data_dir)
    read = [
        sys.executable,
        "-c",
        "import sys; from t2idemo.label_store import LabelStore\n"
        "with LabelStore(sys.argv[1]) as s: print(sorted(s.labels('una').values()))",
        store,
    ]
    *_, state = the_app.label_start("una")
    state = the_app.grid_submit(the_app.grid_view(state)[-1], "bad", *[True] * len(names))[-1]
    LabelStore(store).close()  # what Share and Train do in the app's process
    seen = subprocess.run(read, capture_output=True, text=True, check=True, cwd=os.path.dirname(t2iapp.__file__))
    assert seen.stdout.strip() == str(["bad"] * len(names))
    assert "took back your last screen (8 images)" in the_app.grid_undo(state)[2]
    seen = subprocess.run(read, capture_output=True, text=True, check=True, cwd=os.path.dirname(t2iapp.__file__))
    assert seen.stdout.strip() == "[]", "the Undo screen never reached the file"


def test_share_pushes_to_the_hub(the_app, monkeypatch):
    from huggingface_hub import constants

    server = FakeHub()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        with pytest.raises(ValueError, match="repo_id='nope' is not allowed"):
            the_app.share("nope", TOKEN, False, True, True)
        with pytest.raises(ValueError, match="token is empty"):
            the_app.share("dan/app", "", False, True, True)
        text = the_app.share(" dan/app ", TOKEN, False, True, False)
        assert f"({server.url}/dan/app)" in text and "reward/head.safetensors" in server.files("dan/app")
        assert ("dataset", "dan/app") not in server.repos
    finally:
        server.close()


def test_label_draws_its_own_images_and_scores_you_against_the_judge(drawing_app):
    """With no --data the Label tab draws a batch of seen prompts itself; 'How did I do?' is you vs the judge."""
    from t2idemo.judge import judge
    from t2idemo.loop import judge_agreement

    app = drawing_app
    with pytest.raises(ValueError, match="no images to label yet; press 'Draw images to label'"):
        app.label_start("ana", {})
    with pytest.raises(ValueError, match="images_per_draw=0 is out of range; use an integer from 1 to 64"):
        app.label_draw(0, {})
    *_, status, state = app.label_draw(6, {})
    assert "drew 6 new images (batch 1)" in status and len(app.rows) == 6
    assert all(not r["unseen"] for r in app.rows) and "/" not in app.rows[0]["model"]  # seen prompts; no server path
    *_, state = app.label_start("ana", state)
    truth = []
    for k, row in enumerate(app.rows):  # ana calls everything good but the last image
        with Image.open(os.path.join(app.label_dir, row["file_name"])) as im:
            truth.append("good" if judge(im.convert("RGB"), row)["good"] else "bad")
        *_, state = app.label_click("good" if k < 5 else "bad", state)
    agreed = sum(t == ("good" if k < 5 else "bad") for k, t in enumerate(truth))
    assert judge_agreement(app.label_dir, "ana")["n"] == 6
    assert round(judge_agreement(app.label_dir, "ana")["percent"]) == round(100 * agreed / 6)
    assert f"agree on {100 * agreed / 6:.0f}% of your 6 good/bad labels" in app.label_score(state)
    *_, status, state = app.label_draw(2, state)  # ana had finished: she is moved to the new images
    assert len(app.rows) == 8 and state["index"] == 6


def test_train_and_tune_add_your_model_for_you_only(drawing_app, monkeypatch):
    """Train: the reward model on the labels, a short fine-tune, then a third Compare column in this session only."""
    from t2idemo.labels import simulate_labels

    app = drawing_app
    state = app.session({})
    if len(app.rows) < 16:
        app.label_draw(16 - len(app.rows), state)
    simulate_labels(app.label_dir, labeler="judge")
    names = [r["file_name"] for r in app.rows]
    for who in ("kim", "lee"):  # two people who call every other image good: the majority has both labels
        app.store.add_many([(n, "good" if k % 2 else "bad") for k, n in enumerate(names)], who)
    with pytest.raises(ValueError, match="train the reward model first"):
        app.tune(3, state)
    with pytest.raises(ValueError, match="train_steps=500 is out of range; use an integer from 1 to 200"):
        app.tune(500, state)
    app.job.acquire()  # another visitor's job is running
    app.job_sid = "someone-else"
    try:
        with pytest.raises(ValueError, match="another visitor's job is running"):
            app.train_reward(state)
        with pytest.raises(ValueError, match="another visitor's; you can cancel only your own"):
            app.cancel(state)
    finally:
        app.job_sid = None
        app.job.release()
    text, state = app.train_reward(state)
    assert re.search(r"Reward model trained.*accuracy (\d+%|n/a), AUC", text)
    assert app.cancel(state) == "Nothing is running."
    text, state = app.tune(2, state)
    assert "Your model is ready" in text and os.path.isfile(os.path.join(state["mine"], "model_index.json"))
    assert re.search(r"on 8 unseen combination prompts \(fixed seeds\): base \d+% all right \[\d+, \d+\], yours", text)
    assert re.search(
        r"(better than|worse than) the base, CIs apart|CIs overlapping", text
    )  # what the CIs say, not a stock line
    base, aligned, mine, summary = app.compare("two red circles on sky", 0, 4, 3.0, 2, state)
    assert len(mine) == 2 and "| yours |" in summary
    *_, other, _ = app.compare("two red circles on sky", 0, 4, 3.0, 2, app.session({}))
    assert other == []  # another visitor does not see it
    for shown in (text, summary):
        assert app.cfg.workdir not in shown and os.path.dirname(t2iapp.__file__) not in shown


def test_cancel_stops_the_fine_tune_and_keeps_nothing(drawing_app, monkeypatch):
    import t2idemo.finetune as ft

    app, calls = drawing_app, []
    state = app.session({})
    app.label_draw(4, state)
    _, state = app.train_reward(state)
    real = ft.finetune

    def cancel_at_once(cfg, should_stop=None):  # the visitor presses Cancel as the tune starts
        calls.append(app.cancel(state))
        return real(cfg, should_stop)

    monkeypatch.setattr(ft, "finetune", cancel_at_once)
    text, state = app.tune(3, state)
    assert calls == ["Cancelling at the next step..."] and "cancelled" in text and state["mine"] is None


def test_share_pushes_your_model_and_names_only_with_consent(drawing_app, monkeypatch):
    from huggingface_hub import constants

    from t2idemo.share_page import consent

    app = drawing_app
    with pytest.raises(ValueError, match="no model to share yet"):
        app.share("dan/mine", TOKEN, False, True, True, False, app.session({}))
    state = app.session({})
    _, state = app.train_reward(state)
    _, state = app.tune(1, state)
    server = FakeHub()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        text = app.share("dan/mine", TOKEN, False, True, True, False, state)
        assert "Pushed your model" in text and "labeler names replaced" in text and app.cfg.workdir not in text
        labels = server.files("dan/mine", "dataset")["labels/labels.jsonl"].decode()
        assert "labeler 1" in labels and '"ana"' not in labels and '"kim"' not in labels
        card = server.files("dan/mine")["README.md"].decode()
        assert "| top_k | 2 |" in card and "| base model | tiny-sd |" in card and app.cfg.workdir not in card
        assert re.search(r"\| yours \| \d+\.\d% \[[\d.]+, [\d.]+\] of 8 \|", card) and "## Feedback labels" in card
        app.share("dan/named", TOKEN, False, True, True, True, state)  # names only those who agreed: nobody yet
        assert '"kim"' not in server.files("dan/named", "dataset")["labels/labels.jsonl"].decode()
        consent(app, True, {**state, "labeler": "kim"})  # kim's own choice, in kim's session
        app.share("dan/named", TOKEN, False, True, True, True, state)
        labels = server.files("dan/named", "dataset")["labels/labels.jsonl"].decode()
        assert '"kim"' in labels and '"ana"' not in labels
    finally:
        server.close()


def test_build_wires_four_tabs_and_a_password_field(the_app):
    import gradio as gr

    blocks = list(t2iapp.build(the_app).blocks.values())
    assert [b.label for b in blocks if isinstance(b, gr.Tab)] == ["Compare", "Label", "Train", "Share"]
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    assert {"prompt", "generate", "base-gallery", "aligned-gallery", "label-good", "label-undo", "share-repo"} <= set(
        by_id
    )
    assert {"label-grid", "grid-mark", "grid-image-11", "grid-tick-11", "grid-submit", "grid-undo"} <= set(by_id)
    assert by_id["share-token"].type == "password"


# ----------------------------------------------------------------------------- the page in Chromium
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub_server():
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(reward_dir, hub_server, tmp_path_factory):
    """`python app.py` on a free port as on a Space (no --data: it draws what visitors label; short tunes); its Share
    tab talks to FakeHub. Yields (url, log file, gradio temp dir, workdir)."""
    root = tmp_path_factory.mktemp("server")
    log, tmp, work = root / "app.log", root / "gradio", root / "work"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub_server.url,
        GRADIO_TEMP_DIR=str(tmp),
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )  # any stray Hub call goes to FakeHub, not the internet
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "app.py",
                "--aligned",
                BASE_MODEL,
                "--reward",
                reward_dir,
                "--workdir",
                str(work),
                "--loop.train-steps",
                "2",
                "--loop.unlabelled-per-prompt",
                "1",
                "--loop.eval-images",
                "8",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=os.path.dirname(t2iapp.__file__),
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"app.py did not serve {url} within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, log, tmp, str(work)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server[0])
    yield page
    context.close()


def field(page, elem_id):
    """The text input inside the Gradio component with this elem_id."""
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def generate(page, prompt, **numbers):
    field(page, "prompt").fill(prompt)
    for elem_id, value in numbers.items():
        field(page, elem_id).fill(str(value))
    page.click("#generate")


def expect_error(page, text):
    from playwright.sync_api import expect

    expect(page.locator("[data-testid='toast-text']").filter(has_text=text)).to_be_visible()
    for button in page.locator("[data-testid='toast-close']").all():  # the toast covers the Generate button
        button.dispatch_event("click")
    expect(page.locator("[data-testid='toast-body']")).to_have_count(0)


@browser_test
def test_page_generates_two_grids(page):
    from playwright.sync_api import expect

    t0 = time.time()
    generate(page, "two green circles on sand")
    for side in ("base", "aligned"):
        expect(page.locator(f"#{side}-gallery img")).to_have_count(4)
        expect(page.locator(f"#{side}-gallery .caption-label").first).to_contain_text(" · r ")
    expect(page.locator("#summary")).to_contain_text("two green circles on sand")
    print(f"Compare in the browser, click to both grids: {time.time() - t0:.2f} s")
    captions = page.locator("#aligned-gallery .caption-label").all_inner_texts()
    assert len(captions) == 4 and all(re.fullmatch(r"(✓ good|✗ .+) · r [01]\.\d\d", c) for c in captions)
    # readable at a glance: no caption is cut off (its text fits its box), and the grids use the page's width
    cut = page.evaluate(
        "() => [...document.querySelectorAll('#base-gallery .caption-label, #aligned-gallery .caption-label')]\n"
        "        .filter(e => e.scrollWidth > e.clientWidth + 1 || getComputedStyle(e).textOverflow === 'ellipsis')"
        ".map(e => e.innerText)"
    )
    assert cut == [], f"captions cut off: {cut}"
    page_width = page.evaluate("document.documentElement.clientWidth")
    grid_width = page.locator("#base-gallery").bounding_box()["width"]
    assert grid_width > 0.8 * page_width, f"the base grid uses {grid_width:.0f} of {page_width} px"
    shot = os.environ.get("T2IDEMO_SCREENSHOTS")
    if shot:  # look at it: T2IDEMO_SCREENSHOTS=DIR python -m pytest tests/test_app.py -k two_grids
        os.makedirs(shot, exist_ok=True)
        page.screenshot(path=os.path.join(shot, "compare.png"), full_page=True)


@browser_test
def test_bad_input_shows_an_error_and_the_app_keeps_serving(page):
    from playwright.sync_api import expect

    generate(page, "")
    expect_error(page, "prompt is empty")
    generate(page, "two circles", steps=0)
    expect_error(page, "steps=0 is out of range")
    generate(page, "a purple dog", steps=DEFAULT_STEPS)
    expect_error(page, "word 'dog' is not in the shapes world's vocabulary")
    page.get_by_role("tab", name="Share").click()
    field(page, "share-repo").fill("not a repo")
    page.click("#share-push")
    expect_error(page, "repo_id='not a repo' is not allowed")
    field(page, "share-repo").fill("erin/shapes")
    page.click("#share-push")
    expect_error(page, "token is empty")
    field(page, "share-token").fill(TOKEN)
    page.click("#share-push")
    expect_error(page, "no model to share yet")
    page.get_by_role("tab", name="Compare").click()
    generate(page, "a blue circle", images=2)  # still serving
    expect(page.locator("#base-gallery img")).to_have_count(2)
    expect(page.locator("#aligned-gallery img")).to_have_count(2)


def draw(page, n, total):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Label").click()
    field(page, "label-n").fill(str(n))
    page.click("#label-draw")
    expect(page.locator("#label-status")).to_contain_text(f"{total} in the labelling set")


def label(page, name, labels, done, total=8):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Label").click()
    field(page, "labeler-name").fill(name)
    page.click("#label-start")
    expect(page.locator("#label-status")).to_contain_text(f"labelling as {name}")
    for lab in labels:
        page.click(f"#label-{lab}")
        expect(page.locator("#label-status")).to_contain_text(f"saved {lab}")
    expect(page.locator("#label-progress")).to_contain_text(f"{done} / {total} labelled by {name}")


@browser_test
def test_two_people_label_at_once_into_the_store(browser, server):
    data_dir = os.path.join(server[3], "labelling")
    pages = []
    for _ in range(2):
        p = browser.new_context().new_page()
        p.set_default_timeout(60_000)
        p.goto(server[0])
        pages.append(p)
    draw(pages[0], 8, total=8)
    label(pages[0], "ana", ["good"], done=1)
    label(pages[1], "ben", ["bad"], done=1)  # both sessions open at once, each with its own name and place
    label(pages[0], "ana", ["bad", "skip"], done=3)  # Start again resumes at ana's first unlabelled image
    with LabelStore(default_store_path(data_dir)) as store:
        names = sorted(r["file_name"] for r in load_rows(data_dir, missing_ok=True))
        assert store.labels("ana") == {names[0]: "good", names[1]: "bad", names[2]: "skip"}
        assert store.labels("ben") == {names[0]: "bad"}
    for p in pages:
        p.context.close()


@browser_test
def test_label_train_tune_compare_and_push_without_a_shell(page, server, hub_server):
    """Issue 17's path on a fresh app: draw and label 20 images, how did I do, train, tune, a third column, push."""
    from playwright.sync_api import expect

    t0 = time.time()
    rows = len(load_rows(os.path.join(server[3], "labelling"), missing_ok=True))
    draw(page, 20, total=rows + 20)
    labels = ["good", "bad"] * 10
    label(page, "gus", [], done=0, total=rows + 20)
    for lab in labels:
        page.click(f"#label-{lab}")
        expect(page.locator("#label-status")).to_contain_text(f"saved {lab}")
    expect(page.locator("#label-progress")).to_contain_text(f"20 / {rows + 20} labelled by gus")
    page.click("#label-score")
    expect(page.locator("#label-score-result")).to_contain_text("You and the judge agree on")
    page.get_by_role("tab", name="Train").click()
    page.click("#train-reward")
    expect(page.locator("#train-reward-result")).to_contain_text("Reward model trained", timeout=180_000)
    field(page, "tune-steps").fill("2")
    page.click("#tune")
    expect(page.locator("#tune-result")).to_contain_text("Your model is ready", timeout=300_000)
    page.get_by_role("tab", name="Compare").click()
    generate(page, "two green circles on sand", images=2)
    expect(page.locator("#mine-gallery img")).to_have_count(2)
    expect(page.locator("#summary")).to_contain_text("yours")
    page.get_by_role("tab", name="Share").click()
    field(page, "share-repo").fill("frank/my-shapes")
    field(page, "share-token").fill(TOKEN)
    page.click("#share-push")
    expect(page.locator("#share-result")).to_contain_text("Pushed your model", timeout=120_000)
    print(f"label 20, train, tune 2 steps, compare, push in the browser: {time.time() - t0:.1f} s")
    files = hub_server.files("frank/my-shapes")
    assert "model_index.json" in files and "reward/head.safetensors" in files and "finetune.json" in files
    assert "labeler 1" in hub_server.files("frank/my-shapes", "dataset")["labels/labels.jsonl"].decode()
    content = page.content()
    assert TOKEN not in content
    for path in (server[3], os.path.dirname(os.path.abspath(t2iapp.__file__))):  # no server path in the page
        assert path not in content
    _, log, tmp, _ = server
    time.sleep(0.5)
    assert TOKEN not in log.read_text()
    for root, _, names in os.walk(tmp):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), os.path.join(root, name)


@browser_test
def test_grid_labels_a_screen_into_the_store_and_keys_label_one(page, server):
    """Issue 41: a whole screen of the grid view in one submit, on disk; Undo screen; g / u / b in the single view."""
    from playwright.sync_api import expect

    data_dir = os.path.join(server[3], "labelling")
    rows = len(load_rows(data_dir, missing_ok=True))
    if rows < 14:  # more than one screen
        draw(page, 14 - rows, total=14)
    names = [r["file_name"] for r in load_rows(data_dir)]
    page.get_by_role("tab", name="Label").click()
    # the grid opens before Start: Start's screen then comes last. Opened after Start, its own fresh screen may come
    # after the prompts that Start already showed and wipe the ticks below
    page.get_by_text("Grid view: 12 images on one screen").click()
    expect(page.locator("#grid-status")).to_contain_text("type your name and press Start")
    label(page, "hal", [], done=0, total=len(names))
    expect(page.locator("#grid-tick-11")).to_contain_text(load_rows(data_dir)[11]["prompt"])
    page.get_by_text("I mark the bad ones").click()
    for k in (0, 2):
        page.locator(f"#grid-tick-{k} input").check()
    t0 = time.time()
    page.click("#grid-submit")
    expect(page.locator("#grid-status")).to_contain_text("saved the screen: 10 good, 2 bad")
    print(f"a screen of 12 labels, submit to the next screen: {time.time() - t0:.2f} s")
    with LabelStore(default_store_path(data_dir)) as store:
        assert store.labels("hal") == {n: "bad" if k in (0, 2) else "good" for k, n in enumerate(names[:12])}
    expect(page.locator("#label-progress")).to_contain_text(f"12 / {len(names)} labelled by hal")
    expect(page.locator("#grid-tick-0")).to_contain_text(load_rows(data_dir)[12]["prompt"])  # the next screen
    expect(page.locator("#label-prompt")).to_contain_text(names[12])  # the single view moved on too
    page.click("#grid-undo")
    expect(page.locator("#grid-status")).to_contain_text("took back your last screen (12 images)")
    expect(page.locator("#label-prompt")).to_contain_text(names[0])
    with LabelStore(default_store_path(data_dir)) as store:
        assert store.labels("hal") == {}, [(h["image_id"], h["label"], h["undone"]) for h in store.history("hal")]
    field(page, "labeler-name").press("g")  # typing in a text box labels nothing
    page.locator("#label-progress").click()  # focus off the text box
    page.keyboard.press("g")
    expect(page.locator("#label-status")).to_contain_text(f"saved good for {names[0]}")
    page.keyboard.press("u")
    expect(page.locator("#label-status")).to_contain_text(f"took back your last label, on {names[0]}")
    page.keyboard.press("b")
    expect(page.locator("#label-status")).to_contain_text(f"saved bad for {names[0]}")
    with LabelStore(default_store_path(data_dir)) as store:
        assert store.labels("hal") == {names[0]: "bad"}
