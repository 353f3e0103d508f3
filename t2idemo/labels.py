"""Stage 1b: the simulated labeler and the export of labels into a dataset (the store itself:
``t2idemo.label_store``).

    python -m t2idemo label --data data/feedback --flip 0.1     # the judge as a rater with 10% noise
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from .config import check_ranges, parse_config, ranged, require_set
from .label_store import MAJORITY, LabelStore, check_name, default_store_path


# ----------------------------------------------------------------------------- export into the dataset
def export_labels(dataset_dir: str, store_path: str | None = None, labeler: str | None = MAJORITY) -> dict:
    """Write a "label" field (good, bad or None) into every row of ``dataset_dir/metadata.jsonl``.

    ``labeler``: whose labels; "majority" (or None) takes the majority vote of every labeler. Skips and
    unlabelled images get None. The file is replaced atomically. Returns {"good": n, "bad": n, "none": n}.
    """
    from .data import load_rows, write_rows_atomic

    rows = load_rows(dataset_dir, missing_ok=True)
    if not rows:
        raise ValueError(f"dataset_dir={dataset_dir!r} has no metadata.jsonl rows; generate the dataset first")
    with LabelStore(store_path or default_store_path(dataset_dir)) as store:
        if labeler in (None, MAJORITY):
            labels = store.majority()
        else:
            if labeler not in store.labelers():
                raise ValueError(
                    f"labeler={labeler!r} has no labels in {store.path}; labelers there: "
                    f"{store.labelers()} (or {MAJORITY!r})"
                )
            labels = store.labels(labeler)
    counts = {"good": 0, "bad": 0, "none": 0}
    for row in rows:
        label = labels.get(row["file_name"])
        row["label"] = label if label in ("good", "bad") else None
        counts[row["label"] or "none"] += 1
    write_rows_atomic(dataset_dir, rows)
    return counts


# ----------------------------------------------------------------------------- the simulated labeler
BIASES = {  # systematically biased simulated raters: name -> what the rater gets wrong, every time
    "": "none",
    "four-for-three": "calls an image good when the prompt asks for three shapes and it shows four, all else right",
}


def biased_verdict(verdict: dict, meta: dict, bias: str) -> bool:
    """The rater's good/bad for a judge ``verdict`` on a prompt ``meta``, with the systematic ``bias`` (BIASES)."""
    if (
        bias == "four-for-three"
        and "count" in meta["named"]
        and meta.get("count") == 3
        and verdict["pred"]["count"] == 4
    ):
        return all(verdict["correct"][a] for a in meta["named"] if a != "count")
    return verdict["good"]


def simulate_labels(
    dataset_dir: str,
    store_path: str | None = None,
    labeler: str = "judge",
    flip: float = 0.0,
    skip: float = 0.0,
    seed: int = 0,
    bias: str = "",
) -> dict:
    """``simulate(LabelConfig(...))`` from keyword arguments (the notebooks' short form); the config checks them."""
    return simulate(
        LabelConfig(
            data=dataset_dir, store=store_path or "", labeler=labeler, flip=flip, skip=skip, seed=seed, bias=bias
        )
    )


def simulate(cfg: LabelConfig, chunk: int = 64) -> dict:
    """Label ``cfg.data`` with ``judge.judge`` as a rater: skip an image with probability ``cfg.skip``, else flip the
    judge's verdict with probability ``cfg.flip``; ``cfg.bias`` (BIASES) bends the verdict first. Each image's draws
    come from its own random.Random(f"{seed}:{file_name}"), so a re-run repeats every decision. Images this labeler
    has already labelled are left alone (resumable); clicks are committed ``chunk`` at a time.
    Returns {"good", "bad", "skip", "flipped", "already"} counts."""
    from PIL import Image
    from tqdm.auto import tqdm

    from .data import load_rows
    from .judge import judge

    require_set(cfg)
    rows = load_rows(cfg.data, "data")
    counts = {"good": 0, "bad": 0, "skip": 0, "flipped": 0, "already": 0}
    with LabelStore(cfg.store or default_store_path(cfg.data)) as store:
        have = store.labels(cfg.labeler)
        todo = [r for r in rows if r["file_name"] not in have]
        counts["already"] = len(rows) - len(todo)
        batch = []
        for row in tqdm(todo, desc=f"label ({cfg.labeler})", unit="img"):
            rng = random.Random(f"{cfg.seed}:{row['file_name']}")
            if rng.random() < cfg.skip:
                label = "skip"
            else:
                with Image.open(os.path.join(cfg.data, row["file_name"])) as im:
                    good = biased_verdict(judge(im.convert("RGB"), row), row, cfg.bias)
                if rng.random() < cfg.flip:
                    good = not good
                    counts["flipped"] += 1
                label = "good" if good else "bad"
            counts[label] += 1
            batch.append((row["file_name"], label))
            if len(batch) == chunk:
                store.add_many(batch, cfg.labeler)
                batch = []
        if batch:
            store.add_many(batch, cfg.labeler)
    return counts


def label(cfg: LabelConfig) -> dict:
    """The labels stage: the simulated rater labels ``cfg.data`` (``simulate``), its agreement with every other
    labeler of the store is printed, then, if ``cfg.export`` names a labeler (or "majority"), those labels are
    written into the metadata rows. Returns the counts, plus "exported"."""
    counts = simulate(cfg)
    store_path = cfg.store or default_store_path(cfg.data)
    print(
        f"{cfg.labeler}: {counts['good']} good, {counts['bad']} bad, {counts['skip']} skipped, "
        f"{counts['flipped']} flipped, {counts['already']} already labelled -> {store_path}"
    )
    with LabelStore(store_path) as store:
        for other in store.labelers():
            if other != cfg.labeler:
                a = store.agreement(cfg.labeler, other)
                print(f"agreement {cfg.labeler} vs {other}: n={a['n']}, {a['percent']:.1f}%, kappa={a['kappa']:.3f}")
    if cfg.export:
        counts["exported"] = export_labels(cfg.data, store_path, cfg.export)
        print(f"exported {cfg.export} labels into {os.path.join(cfg.data, 'metadata.jsonl')}: {counts['exported']}")
    return counts


@dataclass
class LabelConfig:
    # dataset folder made by `python -m t2idemo generate`
    data: str = "data/feedback"
    # label store file; "" means DATA/labels.sqlite
    store: str = ""
    # name the simulated rater's labels are stored under
    labeler: str = "judge"
    # probability of flipping the judge's good/bad verdict, 0 - 1 (0.1 - 0.3 is a noisy rater)
    flip: float = ranged(0.0, 0.0, 1.0)
    # probability of skipping an image, 0 - 1
    skip: float = ranged(0.0, 0.0, 1.0)
    # seeds the flips and skips (each image draws from its own seed:file_name stream)
    seed: int = ranged(0, 0, 2_147_483_647)
    # a systematic error: "" (none) | "four-for-three" (four shapes pass for three)
    bias: str = ""
    # then write labels into metadata.jsonl: "" (no), "majority" or a labeler name
    export: str = ""

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.bias not in BIASES:
            raise ValueError(f"bias={self.bias!r} is not allowed; use one of {tuple(BIASES)}")
        check_name("labeler", self.labeler)
        if self.labeler == MAJORITY:
            raise ValueError(f"labeler={self.labeler!r} is reserved for the majority vote; pick another name")

    def check_inputs(self):
        """The folder must exist (checked when the command runs, so that the main job can hold a LabelConfig
        before its feedback folder is made)."""
        if not os.path.isdir(self.data):
            raise ValueError(f"data={self.data!r} is not a folder; run `python -m t2idemo generate --out DIR` first")


def label_main(argv=None):
    return label(
        parse_config(
            LabelConfig,
            argv,
            prog="python -m t2idemo label",
            description="Label a dataset with the judge as a simulated (optionally noisy) rater.",
        )
    )
