"""The app's backend: everything app.py's page does, without Gradio.

One ``Backend`` serves every visitor at once. It holds the base and aligned pipelines and the reward model, the
labelling set and its label store, the one job slot (a reward training or a fine-tune at a time) and each
visitor's tuned model. Its methods take plain values, call the library (``t2idemo.loop``, ``t2idemo.labels``) and
return plain values; app.py's handlers check a visitor's input (``config.check_field``, ``check_prompt``), call them
and turn what they return into the page. The app's latency benchmark (``python -m t2idemo benchmarks app``) drives
the same methods.

    from t2idemo.backend import Backend

    backend = Backend(workdir="runs/app")                          # shipped models; labels in runs/app/labelling
    sides = backend.draw_and_rate("two red circles on sky", [0, 1, 2, 3], 15, 5.0)  # {"base": ..., "aligned": ...}
    backend.label_draw(24)                                     # then people label them (the Label tab)
    reward, result = backend.train_reward_model("ana")             # a session id: its files go under sessions/ana
    model, scores = backend.tune("ana", reward, 200)          # the session's fine-tune (t2idemo.loop)
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from itertools import islice

from PIL import Image

from . import world
from .config import check_field, ranged, seed_field
from .data import load_rows
from .generate import ALIGNED_MODEL, BASE_MODEL, DEFAULT_GUIDANCE, DEFAULT_STEPS
from .label_store import MAJORITY, LabelStore, default_store_path
from .labeling import MARKS, screen_labels, unlabelled
from .loop import LoopConfig
from .reward import REWARD_MODEL

DEFAULT_PROMPT = "three purple circles on grass"  # Compare's first prompt; the warm-up's and the benchmark's too


@dataclass
class CompareConfig:
    """What a visitor may ask of Compare: app.py's inputs show these ranges and check them (a public Space's caps)."""

    # image i of each model uses seed + i
    seed: int = seed_field()
    # sampler steps
    sample_steps: int = ranged(DEFAULT_STEPS, 1, 100)
    # classifier-free guidance scale
    guidance: float = ranged(DEFAULT_GUIDANCE, 0.0, 20.0)
    # images each model draws
    images_per_model: int = ranged(4, 1, 16)


MAX_PROMPT = 200  # characters: the world's longest prompt is 35
MAX_NAME = 64  # characters of a labeler's name
MAX_MODELS = 4  # visitors' models kept loaded at once (about 10 MB each); an older one reloads when used


# ----------------------------------------------------------------------------- a visitor's input
def check_prompt(prompt) -> tuple[str, dict]:
    """(prompt, metadata) of a prompt in the world's words; a ValueError naming the bad word otherwise."""
    prompt = " ".join(str(prompt or "").split())
    if len(prompt) > MAX_PROMPT:
        raise ValueError(
            f"prompt is {len(prompt)} characters long; use at most {MAX_PROMPT} (the world's prompts are "
            f"short, e.g. 'three purple circles on grass')"
        )
    if not prompt:
        raise ValueError(
            "prompt is empty; type a prompt in the shapes world's words, e.g. 'three purple circles on grass'"
        )
    return prompt, world.parse_prompt(prompt)


def example_prompts() -> list[tuple[str, str]]:
    """(prompt, label) pairs, three per category: a typical prompt (what the base model's LAION-like data shows
    most), an atypical one the feedback covers (seen), and an atypical one held out of it (unseen)."""
    out = []
    for category in world.CATEGORIES:
        typical = world.typical_prompts(category)
        atypical = [pm for pm in world.all_prompts(category, unseen=False) if not world.is_typical(pm[1])]
        unseen = world.all_prompts(category, unseen=True)
        for (prompt, _), kind in (
            (typical[-1], "typical"),
            (atypical[len(atypical) // 3], "atypical"),
            (unseen[len(unseen) // 3], "atypical · unseen"),
        ):
            out.append((prompt, f"{category} · {kind}: {prompt}"))
    return out


def big(image: Image.Image, scale: int) -> Image.Image:
    """Upscale with nearest neighbour, so the 32x32 pixels stay crisp."""
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def caption(verdict: dict, meta: dict, score: float) -> str:
    """'✓ good · r 0.83', or what the judge read wrong: '✗ count 3, scene snow · r 0.41'."""
    wrong = [f"{a} {verdict['pred'][a]}" for a in meta["named"] if not verdict["correct"][a]]
    return f"{'✓ good' if verdict['good'] else '✗ ' + ', '.join(wrong)} · r {score:.2f}"


# ----------------------------------------------------------------------------- the backend
class Backend:
    """The models, the labelling set, the job slot and the visitors' models. A session id (``sid``) names one
    visitor: their reward model and tuned model live under WORKDIR/sessions/SID.

    ``data``: a labelling set (PNGs + metadata.jsonl) to label; if it holds none, the backend labels
    WORKDIR/labelling, which ``draw_labelling`` fills. ``loop``: the loop's settings (its model is ``base``);
    ``threads``: torch CPU threads (0 = torch's default)."""

    def __init__(
        self,
        base: str = BASE_MODEL,
        aligned: str = ALIGNED_MODEL,
        reward: str = REWARD_MODEL,
        workdir: str = "runs/app",
        data: str = "",
        loop: LoopConfig | None = None,
        threads: int = 1,
    ):
        import torch

        from .generate import load_pipeline
        from .reward import load_reward_fn

        if threads:
            torch.set_num_threads(threads)
        self.workdir = workdir
        self.loop = dataclasses.replace(loop or LoopConfig(), model=base)
        self.pipes = {"base": load_pipeline(base), "aligned": load_pipeline(aligned)}
        self.reward_fn = load_reward_fn(reward)
        self.sampling = threading.Lock()  # a pipeline's scheduler keeps per-call state: one sampling call at a time
        self.fixed_data = bool(data) and os.path.isfile(os.path.join(data, "metadata.jsonl"))  # the owner's set
        self.label_dir = data if self.fixed_data else os.path.join(workdir, "labelling")
        os.makedirs(self.label_dir, exist_ok=True)
        self.rows = load_rows(self.label_dir, missing_ok=True)
        self.store = LabelStore(default_store_path(self.label_dir))
        self.job = threading.Lock()  # one reward training or fine-tune at a time, app-wide
        self.job_sid = None  # the session whose job runs
        self.cancel_flag = threading.Event()
        self.mine = {}  # session id -> (model folder, loaded pipeline): each visitor's own model
        self.draw_and_rate(DEFAULT_PROMPT, [0], 2, DEFAULT_GUIDANCE)  # warm-up, so the first visitor waits no longer

    @staticmethod
    def session(state: dict | None) -> dict:
        """The visitor's session, given a random id on first use (gr.State starts every visitor at the same value)."""
        state = dict(state or {})
        state.setdefault("labeler", None)
        state.setdefault("index", None)
        if not state.get("sid"):
            state["sid"] = secrets.token_hex(8)
        return state

    def session_dir(self, sid: str) -> str:
        """Where a session's reward model and tuned model go."""
        return os.path.join(self.workdir, "sessions", sid)

    # ------------------------------------------------------------------------- Compare
    def draw_and_rate(self, prompt: str, seeds: list, steps: int, guidance: float, mine=None) -> dict:
        """{side: (images, judge verdicts, reward scores)} for "base", "aligned" and, given ``mine`` (a pipeline),
        "yours": each model draws ``prompt`` from the same ``seeds``, and every image is judged and scored by the
        backend's one reward model, so the scores compare model to model."""
        from .generate import sample
        from .judge import judge

        meta, n = world.parse_prompt(prompt), len(seeds)
        sides = dict(self.pipes) if mine is None else {**self.pipes, "yours": mine}
        out = {}
        for side, pipe in sides.items():
            with self.sampling:
                images = sample(pipe, [prompt] * n, seeds, steps, guidance, batch_size=n)
            scores = self.reward_fn(images, [prompt] * n).tolist()
            out[side] = (images, [judge(im, meta) for im in images], scores)
        return out

    def my_pipeline(self, sid: str, folder: str | None):
        """The pipeline of a session's tuned model in ``folder``, loaded on first use; None if it has none. At most
        MAX_MODELS stay loaded: the oldest is dropped, and reloads from disk when used again."""
        from .generate import load_pipeline

        if not folder or not os.path.isfile(os.path.join(folder, "model_index.json")):
            return None
        if sid not in self.mine or self.mine[sid][0] != folder:
            while len(self.mine) >= MAX_MODELS:
                self.mine.pop(next(iter(self.mine)))
            self.mine[sid] = (folder, load_pipeline(folder))
        return self.mine[sid][1]

    # ------------------------------------------------------------------------- Label
    def label_draw(self, n: int) -> list[dict]:
        """Draw ``n`` more images of seen prompts from the base model into the labelling set -> the new rows."""
        from .loop import draw_labelling_batch

        if self.fixed_data:
            raise ValueError("this app labels the dataset its owner passed with --data; it draws no new images")
        cfg = dataclasses.replace(self.loop, images_per_draw=n)
        with self.sampling:  # one writer of the labelling set, and the base pipeline is not thread-safe
            new = draw_labelling_batch(self.pipes["base"], self.label_dir, cfg, model_name="base")
            self.rows = load_rows(self.label_dir, missing_ok=True)
        return new

    def _unlabelled(self, labeler: str, start: int):
        """The rows at or after ``start`` (wrapping round) that ``labeler`` has not labelled, as row indices."""
        return unlabelled(self.rows, self.store.labels(labeler), start)

    def next_unlabelled(self, labeler: str, start: int) -> int | None:
        """The first row at or after ``start`` (wrapping round) that ``labeler`` has not labelled."""
        return next(self._unlabelled(labeler, start), None)

    def label_screen(self, labeler: str, start: int = 0, n: int | None = None) -> list[dict]:
        """One screen of the grid view: the rows of the next ``n`` images at or after row ``start`` (wrapping
        round) that ``labeler`` has not labelled; fewer near the end, [] when they labelled every image."""
        n = self.loop.images_per_screen if n is None else check_field(LoopConfig, "images_per_screen", n)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < max(len(self.rows), 1):
            last = max(len(self.rows) - 1, 0)
            raise ValueError(f"start={start!r} is not allowed; use a row number from 0 to {last}")
        return [self.rows[i] for i in islice(self._unlabelled(labeler, start), n)]

    def check_labeler(self, name) -> str:
        """The labeler's name, stripped; a ValueError for an empty, reserved or over-long name."""
        name = (name or "").strip()
        if not name:
            raise ValueError("name is empty; type the name your labels are stored under, e.g. 'ana'")
        if name == MAJORITY:
            raise ValueError(f"name={name!r} is reserved for the majority vote; pick another name")
        if len(name) > MAX_NAME:
            raise ValueError(f"name is {len(name)} characters long; use at most {MAX_NAME}")
        return name

    def start_labelling(self, name) -> tuple[str, int | None]:
        """(the labeler's name, checked; the first row they have not labelled)."""
        name = self.check_labeler(name)
        return name, self.next_unlabelled(name, 0)

    def label_image(self, row: int | str) -> Image.Image:
        """An image of the labelling set, by row index or file name (RGB, as drawn)."""
        name = self.rows[row]["file_name"] if isinstance(row, int) else row
        with Image.open(os.path.join(self.label_dir, name)) as im:
            return im.convert("RGB")

    def label_counts(self) -> dict:
        """{labeler: how many images of the labelling set they labelled}."""
        names = {r["file_name"] for r in self.rows}
        return {name: len(names & labels.keys()) for name, labels in self.store.labels().items()}

    def _add_labels(self, items: list, labeler: str, again: str, screen: bool = False) -> None:
        """Write (image, label) ``items`` in one transaction; a store error becomes a ValueError: nothing saved."""
        try:
            self.store.add_many(items, labeler, screen=screen)
        except sqlite3.Error as e:  # e.g. another writer held the lock past the timeout: nothing moves
            raise ValueError(f"not saved ({e}); {again}") from None

    def save_label(self, index: int, label: str, labeler: str) -> str:
        """Store ``labeler``'s ``label`` for row ``index`` (on disk when this returns) -> the image's file name."""
        image_id = self.rows[index]["file_name"]
        self._add_labels([(image_id, label)], labeler, f"click {label} again")
        return image_id

    def save_screen(self, labeler: str, file_names: list, marked: list, mark: str = "good") -> dict:
        """Store one screen of the grid view: ``mark`` for the ``marked`` images of ``file_names``, the other label
        of MARKS for the rest, in one transaction (on disk when this returns; one undo takes the whole screen
        back) -> {"good": n, "bad": n}."""
        labeler, names = self.check_labeler(labeler), {r["file_name"] for r in self.rows}
        unknown = [f for f in file_names if f not in names]
        if not file_names or unknown:
            raise ValueError(
                f"file_names={unknown or list(file_names)!r} is not allowed; use file names of the "
                f"labelling set's images (at least one)"
            )
        items = screen_labels(file_names, marked, mark)
        self._add_labels(items, labeler, "submit the screen again", screen=True)
        return {label: sum(lab == label for _, lab in items) for label in MARKS}

    def undo_label(self, labeler: str) -> tuple[str | None, int | None]:
        """Take back ``labeler``'s last label (or last screen) -> (its (first) image, that image's row), (None, None)
        if there was none."""
        image_id = self.store.undo(labeler)
        return image_id, self.row_of(image_id)

    def row_of(self, file_name: str | None) -> int | None:
        """The row of the image ``file_name`` in the labelling set; None if it is not there."""
        return next((i for i, r in enumerate(self.rows) if r["file_name"] == file_name), None)

    def undo_screen(self, labeler: str) -> list[str]:
        """Take back ``labeler``'s last screen (or last single label) -> the images it labelled ([]: none)."""
        return self.store.undo_screen(labeler)

    # ------------------------------------------------------------------------- Train
    def run_job(self, sid: str, fn):
        """Run ``fn()`` as the app's one job; another session gets a clear message instead of a second job."""
        if not self.job.acquire(blocking=False):
            who = "your own" if self.job_sid == sid else "another visitor's"
            raise ValueError(
                f"{who} job is running (one reward training or fine-tune at a time on this machine); "
                f"try again when it finishes"
            )
        self.job_sid = sid
        self.cancel_flag.clear()
        try:
            return fn()
        finally:
            self.job_sid = None
            self.job.release()

    def cancel_job(self, sid: str) -> bool:
        """Ask session ``sid``'s running job to stop at its next step -> False if no job runs; a ValueError if the
        job that runs is another session's."""
        if self.job_sid is None:
            return False
        if self.job_sid != sid:
            raise ValueError("the job that is running is another visitor's; you can cancel only your own")
        self.cancel_flag.set()
        return True

    def train_reward_model(self, sid: str) -> tuple[str, dict]:
        """Train a reward model on the majority vote of everyone's labels, as the one job, into the session's
        folder -> (its folder, ``loop.train_reward_on_labels``'s result)."""
        from .loop import train_reward_on_labels

        out = os.path.join(self.session_dir(sid), "reward")
        result = self.run_job(sid, lambda: train_reward_on_labels(self.label_dir, out, self.loop, lock=self.sampling))
        return out, result

    def tune(self, sid: str, reward: str, steps: int) -> tuple[str | None, dict]:
        """A ``steps``-step fine-tune of the base model with the main job's recipe on the labels and the reward model
        in ``reward``, as the one job, into the session's folder (its last tune replaced); then the judge on unseen
        combination prompts, base vs tuned, saved as eval.json next to the model for its card. Returns (model
        folder, {"base": rate, "yours": rate}) (no rates if ``loop.eval_images`` is 0), or (None, {}) if cancelled."""
        out = os.path.join(self.session_dir(sid), "tune")
        cfg = dataclasses.replace(self.loop, train_steps=steps)
        result = self.run_job(sid, lambda: self._tune_job(reward, out, cfg))
        self.mine.pop(sid, None)  # a re-tune replaced the folder: load it afresh
        return result

    def _tune_job(self, reward: str, out: str, cfg: LoopConfig) -> tuple[str | None, dict]:
        """The fine-tune and its evaluation (run under the job slot): see ``tune``."""
        from .finetune import Cancelled
        from .generate import load_pipeline
        from .loop import quick_eval, tune_on_labels

        if os.path.isdir(out):
            shutil.rmtree(out)
        base = load_pipeline(cfg.model)  # the job's own copy: Compare keeps sampling meanwhile
        try:
            model = tune_on_labels(self.label_dir, reward, out, cfg, pipe=base, should_stop=self.cancel_flag.is_set)
        except Cancelled:
            return None, {}
        scores = quick_eval({"base": base, "yours": load_pipeline(model)}, cfg) if cfg.eval_images else {}
        with open(os.path.join(model, "eval.json"), "w") as f:  # the model card reports it
            json.dump({"unseen_combinations_all_right": scores}, f, indent=1)
        return model, scores

    # ------------------------------------------------------------------------- Share
    def share(
        self, repo_id: str, token: str, model: str, reward: str, private: bool, with_labels: bool, with_names: bool
    ) -> tuple:
        """Push ``model`` with its card, the reward model in ``reward`` (unless empty) and, with ``with_labels``, the
        labelling set and its labels (with ``with_names``, the names of the labelers who agreed themselves,
        ``consent.consenting``; the others as 'labeler N') to the Hub repo ``repo_id`` -> (the hub.PushConfig,
        hub.push's result). The token goes to hub.push and nowhere else."""
        from .consent import consenting
        from .hub import PushConfig, push

        names = consenting(self.label_dir) if with_names else False
        cfg = PushConfig(
            repo_id=repo_id,
            model=model,
            private=bool(private),
            reward=reward,
            labeler_names=names,
            data=self.label_dir if with_labels and self.rows else "",
        )
        return cfg, push(cfg, token)
