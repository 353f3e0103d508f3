"""The paper's loop at the size of a browser tab: what the app's Label and Train tabs and notebook 00 call.

    from t2idemo import loop
    from t2idemo.generate import load_pipeline

    folder, cfg = "runs/app/labelling", loop.LoopConfig()
    loop.draw_labelling_batch(load_pipeline(), folder, cfg)          # 24 images of seen prompts, appended
    # ... people label them (the app's Label tab, the notebook Labeler, `python -m t2idemo label`) ...
    loop.judge_agreement(folder, "ana")                              # ana against the judge: agreement, kappa
    loop.train_reward_on_labels(folder, "runs/app/reward", cfg)      # seconds: held-out accuracy and AUC
    loop.tune_on_labels(folder, "runs/app/reward", "runs/app/mine", cfg)  # a few minutes on two CPU cores
    loop.quick_eval({"base": base_pipe, "yours": tuned_pipe}, cfg)   # the judge on unseen combinations

A session is the main job's loop built for tens to a few hundred labels, not a thousand. The labelling images are
drawn like the main job's feedback images (seen prompts, its sampler settings). The reward model is the few-label
one (``reward_attr.AttributeReward``): its frozen CLIP checks each attribute the prompt names, and the labels
calibrate six numbers on top, where the main job's MLP head, trained on so few labels, did worse than its own CLIP
(``cfg.reward = "head"`` keeps that head, as an ablation). The fine-tune is the main job's filtered recipe (each
prompt's 2 best images the reward model calls good, at weight 1, beta 1, lr 5e-4) on the labelled images plus
``unlabelled_per_prompt`` generations of every prompt of the world, seen and unseen: the reward model, not the
labels, decides which of those to learn from, so a few labels reach every prompt. What a session buys at each
label count is measured by ``python -m t2idemo benchmarks session`` (docs/guide.md, "A short session"). Every
stage's config comes from ``runconfig.round_configs`` on ``main_job(cfg)``: the main job's preset with the
session's sizes as overrides, round 0 (its seeds are the session's seed).
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass

from . import world
from .config import check_ranges, ranged, seed_field
from .data import load_rows, save_png, write_rows_atomic
from .generate import BASE_MODEL, generate_dataset, image_row, image_seed, sample
from .label_store import LabelStore, default_store_path
from .labels import export_labels
from .runconfig import RoundFolders, RunConfig, preset, round_configs
from .stats import agreement_stats

REWARDS = ("attribute", "head")  # the session's reward model: reward_attr.AttributeReward | the main job's head
UNLABELLED_SPLITS = ("all", "seen", "unseen", "labelled")  # whose prompts get unlabelled generations
VAL_FRAC = 0.25  # share of the labelled prompts held out to score the reward model


@dataclass
class LoopConfig:
    # the pipeline that draws the labelling images and is tuned
    model: str = BASE_MODEL
    # images per Draw of the Label tab (a labelling batch)
    images_per_draw: int = ranged(24, 1, 64)
    # images on one screen of the Label tab's grid view
    images_per_screen: int = ranged(12, 1, 16)
    # the reward model: "attribute" (CLIP's check of each named attribute, calibrated on the
    # labels: reward_attr) | "head" (the main job's MLP head, trained on the labels alone)
    reward: str = "attribute"
    # generations of each prompt of unlabelled_split, which the reward
    # model scores and the fine-tune filters
    unlabelled_per_prompt: int = ranged(8, 0, 16)
    # their prompts: "all" (the world's 405, seen and unseen, as the main job) | "seen" |
    # "unseen" | "labelled" (only the prompts of labelled images)
    unlabelled_split: str = "all"
    # fine-tune optimiser steps (capped for a shared CPU Space)
    train_steps: int = ranged(200, 1, 200)
    # D_model and D_pre images per fine-tune step
    tune_batch: int = ranged(64, 4, 64)
    # reward="head" only: at most this many passes over the labels
    reward_epochs: int = ranged(100, 10, 300)
    # after the fine-tune: unseen combination images per model, base vs tuned
    eval_images: int = ranged(64, 0, 512)
    # seeds the prompts, the images, the reward model and the fine-tune
    seed: int = seed_field()

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.reward not in REWARDS:
            raise ValueError(f"reward={self.reward!r} is not allowed; use one of {REWARDS}")
        if self.unlabelled_split not in UNLABELLED_SPLITS:
            raise ValueError(
                f"unlabelled_split={self.unlabelled_split!r} is not allowed; use one of {UNLABELLED_SPLITS}"
            )


def main_job(cfg: LoopConfig) -> RunConfig:
    """The main job's config (``preset("shapes")``: its sampler settings, reward model and fine-tune recipe) at the
    app's size: LoopConfig's fields as overrides, nothing else changed."""
    main = preset("shapes")
    split = (
        "seen" if cfg.unlabelled_split == "labelled" else cfg.unlabelled_split
    )  # "labelled": tune_on_labels names them
    return preset(
        "shapes",
        model=cfg.model,
        seed=cfg.seed,
        unlabelled_per_prompt=cfg.unlabelled_per_prompt,
        unlabelled_split=split,
        **{
            "reward.max_epochs": cfg.reward_epochs,
            "reward.patience": 10,
            "reward.val_frac": VAL_FRAC,
            "finetune.train_steps": cfg.train_steps,
            "finetune.batch": cfg.tune_batch,
            "finetune.pre_batch": cfg.tune_batch,
            "finetune.pre_pool": min(main.finetune.pre_pool, cfg.train_steps * cfg.tune_batch),
        },
    )


def app_round(cfg: LoopConfig, folder: str, reward: str, out: str = ""):
    """Every stage's config for the app's round (round 0): labels in ``folder``, the reward model in ``reward``,
    the unlabelled images in OUT/unlabelled and the tuned pipeline in OUT/model."""
    folders = RoundFolders(
        feedback=folder,
        reward_data=folder,
        reward=reward,
        unlabelled=os.path.join(out, "unlabelled"),
        aligned=os.path.join(out, "model"),
    )
    return round_configs(main_job(cfg), 0, cfg.model, folders)


# ----------------------------------------------------------------------------- 1. a batch to label
def draw_labelling_batch(pipe, folder: str, cfg: LoopConfig, model_name: str = "") -> list[dict]:
    """Append ``cfg.images_per_draw`` images of random seen prompts, drawn by ``pipe``, to the imagefolder ``folder``
    (created if needed). Batch b's images are b{b:03d}_{i:03d}.png. Returns the new rows. Not safe against a
    second writer of the same folder at the same moment: the app calls it under its sampling lock."""
    os.makedirs(folder, exist_ok=True)
    rows = load_rows(folder, missing_ok=True)
    b = 1 + max((int(r.get("batch", 0)) for r in rows), default=0)
    rng = random.Random(f"{cfg.seed}:{b}")
    pairs = world.all_prompts(unseen=False)  # the feedback prompts; the unseen ones stay held out
    chosen = [rng.choice(pairs) for _ in range(cfg.images_per_draw)]
    seeds = [image_seed(cfg.seed + b, i) for i in range(cfg.images_per_draw)]
    gen = main_job(cfg).generate  # the main job's feedback sampler settings
    images = sample(
        pipe, [p for p, _ in chosen], seeds, gen.sample_steps, gen.guidance, batch_size=cfg.images_per_draw
    )
    new = []
    for i, ((prompt, meta), s, image) in enumerate(zip(chosen, seeds, images)):
        name = f"b{b:03d}_{i:03d}.png"
        save_png(image, os.path.join(folder, name))  # complete or absent, never half-written
        new.append(image_row(name, prompt, meta, s, model_name, gen.sample_steps, gen.guidance, batch=b))
    write_rows_atomic(folder, rows + new)  # the rows appear only once every PNG is on disk
    return new


# ----------------------------------------------------------------------------- 2. you against the judge
def judge_agreement(folder: str, labeler: str) -> dict:
    """How often ``labeler``'s good/bad labels in ``folder`` match the judge's verdict (skips left out).
    Returns labels.agreement_stats ({"n", "percent", "kappa"}) plus "you_good_judge_bad" and
    "you_bad_judge_good": the file names where the two disagree."""
    from PIL import Image

    from .judge import judge

    rows = {r["file_name"]: r for r in load_rows(folder, missing_ok=True)}
    with LabelStore(default_store_path(folder)) as store:
        mine = {i: v for i, v in store.labels(labeler).items() if v in ("good", "bad") and i in rows}
    pairs, disagree = [], {"you_good_judge_bad": [], "you_bad_judge_good": []}
    for image_id in sorted(mine):
        with Image.open(os.path.join(folder, image_id)) as im:
            truth = "good" if judge(im.convert("RGB"), rows[image_id])["good"] else "bad"
        pairs.append((mine[image_id], truth))
        if mine[image_id] != truth:
            disagree[f"you_{mine[image_id]}_judge_{truth}"].append(image_id)
    return {**agreement_stats(pairs), **disagree}


# ----------------------------------------------------------------------------- 3. the reward model
MIN_LABELS = 2  # good and bad labels each that calibrating a reward model needs


def train_reward_on_labels(folder: str, out: str, cfg: LoopConfig, lock=None) -> dict:
    """Export the majority vote of everyone's labels into ``folder``'s metadata, fit the session's reward model on
    them (``cfg.reward``) into ``out``, and return {"good", "bad", "val_accuracy", "val_auc", "n_val"}: accuracy
    (r >= 0.5 means good) and AUC on a quarter of the labelled prompts, held out of a fit on the rest (the model
    saved is then fitted on every label). ``lock``: held while the metadata is rewritten, if another thread may
    append to it (the app's Draw button)."""
    from contextlib import nullcontext

    from .data import load_images
    from .reward_train import split_by_prompt
    from .stats import roc_auc

    with lock or nullcontext():
        counts = export_labels(folder)  # label = the majority vote; ties, skips and unlabelled images get None
    if counts["good"] < MIN_LABELS or counts["bad"] < MIN_LABELS:
        raise ValueError(
            f"the reward model needs at least {MIN_LABELS} good and {MIN_LABELS} bad labels; there are "
            f"{counts['good']} good and {counts['bad']} bad so far: label more images"
        )
    rows = [r for r in load_rows(folder) if r.get("label") in ("good", "bad")]
    if cfg.reward == "head":
        model = train_head(folder, out, cfg)
        _, val = split_by_prompt(rows, model.cfg.val_frac, model.cfg.seed)  # the prompts its early stopping held out
        val_rows = [rows[i] for i in val]
        scores = model(load_images(folder, val_rows), [r["prompt"] for r in val_rows]).tolist() if val_rows else []
    else:
        scores, val_rows = fit_attribute_reward(folder, rows, out, cfg)
    truth = [r["label"] == "good" for r in val_rows]
    right = [(s >= 0.5) == t for s, t in zip(scores, truth)]
    return {
        "good": counts["good"],
        "bad": counts["bad"],
        "n_val": len(val_rows),
        "val_accuracy": 100.0 * sum(right) / len(right) if right else None,
        "val_auc": round(roc_auc(scores, truth), 4) if 0 < sum(truth) < len(truth) else None,
    }


def fit_attribute_reward(folder: str, rows: list, out: str, cfg: LoopConfig) -> tuple[list, list]:
    """The few-label reward (reward_attr): fitted on three quarters of the labelled prompts and scored on the rest
    (-> (scores, those rows)), then fitted on every label and saved to ``out``."""
    from .data import load_images
    from .reward import save_reward_model
    from .reward_attr import AttributeReward
    from .reward_train import split_by_prompt

    model = AttributeReward()
    x = model.features(load_images(folder, rows), [r["prompt"] for r in rows])  # (N, 5) CLIP's attribute margins
    y = [float(r["label"] == "good") for r in rows]
    one_prompt = len({r["prompt"] for r in rows}) < 2  # nothing to hold out
    train, val = (list(range(len(rows))), []) if one_prompt else split_by_prompt(rows, VAL_FRAC, cfg.seed)
    held_out = AttributeReward(model.clip).fit_features(x[train], [y[i] for i in train])
    model.fit_features(x, y)
    save_reward_model(model, out, {"n_labels": len(rows), "good": int(sum(y))})
    return held_out.score(x[val]).tolist() if val else [], [rows[i] for i in val]


def train_head(folder: str, out: str, cfg: LoopConfig):
    """The main job's reward head (its CLIP, MLP and loss), trained on the labels in ``folder`` into ``out``."""
    from .reward_train import train as train_reward

    return train_reward(app_round(cfg, folder, out).reward)


# ----------------------------------------------------------------------------- 4. the fine-tune
def tune_on_labels(folder: str, reward: str, out: str, cfg: LoopConfig, pipe=None, should_stop=None) -> str:
    """The main job's steps 4 and 5 at a session's size: ``cfg.unlabelled_per_prompt`` images of every prompt of
    ``cfg.unlabelled_split``, scored by the reward model in ``reward``, then the main job's fine-tune (its
    filtered recipe, beta, lr) on them and the labelled images for ``cfg.train_steps`` steps of ``cfg.tune_batch``.
    Writes the pipeline to OUT/model and returns that folder. ``should_stop`` cancels it (finetune.Cancelled).
    ``folder`` None: no labels at all, the reward model alone picks the images (the session curve's 0 labels)."""
    from .finetune import finetune

    rows = [r for r in load_rows(folder, missing_ok=True) if r.get("label") in ("good", "bad")] if folder else []
    if folder and not rows:
        raise ValueError("no labelled images in the labelling set yet; label some and train the reward model first")
    rnd = app_round(cfg, folder or os.path.join(out, "unlabelled"), reward, out)
    (fcfg,) = rnd.finetune.values()
    if rnd.unlabelled:  # the main job's unlabelled generations
        prompts = "|".join(sorted({r["prompt"] for r in rows})) if cfg.unlabelled_split == "labelled" else ""
        generate_dataset(dataclasses.replace(rnd.unlabelled, prompts=prompts), pipe)
    if not folder:  # D_model: the unlabelled images alone, each weighted by the reward model
        fcfg = dataclasses.replace(fcfg, data=fcfg.unlabelled, unlabelled="", weight="reward")
    return finetune(fcfg, should_stop=should_stop)


# ----------------------------------------------------------------------------- 5. did it help?
def quick_eval(pipes: dict, cfg: LoopConfig) -> dict:
    """The judge on ``cfg.eval_images`` unseen combination prompts (the main job's evaluation prompts, fixed seeds,
    default sampler), for each named pipeline: {name: {"k": all right, "n", "p", "lo", "hi"}} (Wilson 95%).
    A few dozen images tell a large change from none; the main job's 512 tell a few points."""
    from .evaluate import eval_prompts, rate
    from .judge import judge

    metas = eval_prompts("unseen", cfg.eval_images, 0, cfg.seed)  # combination prompts only
    seeds = [image_seed(cfg.seed, i) for i in range(len(metas))]
    out = {}
    for name, pipe in pipes.items():
        images = sample(pipe, [m["prompt"] for m in metas], seeds)  # default steps and guidance, as evaluate
        out[name] = rate(sum(judge(im, m)["good"] for im, m in zip(images, metas)), len(metas))
    return out
