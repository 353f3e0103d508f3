"""Evaluation at SD scale, where no judge reads the images (``python -m t2idemo evaluate summary``): per category
of a generated, labelled set, people's good rate with a Wilson 95% CI and the mean reward r(x, z)."""

from __future__ import annotations

from dataclasses import dataclass

from .data import load_images, load_rows
from .sd import CATEGORIES as SD_CATEGORIES
from .stats import wilson

REWARD_CHUNK = 64  # images per reward-model call (memory, not results)


def summary(data: str, reward: str = "", device: str = "") -> dict:
    """Per category of a generated, labelled set: images, labelled images, the fraction labelled good with a
    Wilson 95% CI (people's labels, written by ``labels.export_labels``), and the mean reward r(x, z) when
    ``reward`` (a reward-model folder) is given. Compare a base and an aligned model by running it on the
    sets each drew from the same prompts and seeds. Returns {category or "all": {...}}."""
    from .reward import load_reward_fn

    rows = load_rows(data, "data")
    scores = [None] * len(rows)
    if reward:
        reward_fn = load_reward_fn(reward, device=device or None)
        for i in range(0, len(rows), REWARD_CHUNK):
            chunk = rows[i : i + REWARD_CHUNK]
            rewards = reward_fn(load_images(data, chunk), [r["prompt"] for r in chunk])
            scores[i : i + REWARD_CHUNK] = [float(s) for s in rewards]
    out = {}
    for cat in list(SD_CATEGORIES) + ["all"]:
        idx = [i for i, r in enumerate(rows) if cat == "all" or r.get("category") == cat]
        if not idx:
            continue
        labelled = [i for i in idx if rows[i].get("label") in ("good", "bad")]
        good = sum(rows[i]["label"] == "good" for i in labelled)
        out[cat] = {
            "images": len(idx),
            "labelled": len(labelled),
            "good": good,
            "good_rate": good / len(labelled) if labelled else None,
            "good_ci": wilson(good, len(labelled)) if labelled else None,
            "mean_reward": sum(scores[i] for i in idx) / len(idx) if reward else None,
        }
    return out


def summary_table(res: dict) -> str:
    lines = ["| category | images | labelled | good [95% CI] | mean reward |", "| --- | --- | --- | --- | --- |"]
    for cat, s in res.items():
        good = (
            "-" if s["good_rate"] is None else f"{s['good_rate']:.1%} [{s['good_ci'][0]:.1%}, {s['good_ci'][1]:.1%}]"
        )
        r = "-" if s["mean_reward"] is None else f"{s['mean_reward']:.3f}"
        lines.append(f"| {cat} | {s['images']} | {s['labelled']} | {good} | {r} |")
    return "\n".join(lines)


@dataclass
class SummaryConfig:
    # a generated set (metadata.jsonl + PNGs), labelled with labels.export_labels for the good rate
    data: str = ""
    # reward-model folder (reward train --run); empty: no mean reward
    reward: str = ""
    # "cpu", "cuda", ...; "" = cuda when available
    device: str = ""

    def __post_init__(self):
        if not self.data:
            raise ValueError("data='' is not allowed; pass the folder of a generated set")
