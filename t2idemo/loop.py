"""The paper's loop at the size of a browser tab: what the app's Label and Train tabs call.

    from t2idemo import loop
    from t2idemo.generate import load_pipeline

    folder, cfg = "runs/app/labelling", loop.LoopConfig()
    loop.draw_labelling_batch(load_pipeline(), folder, cfg)          # 24 images of seen prompts, appended
    # ... people label them (the app's Label tab, the notebook Labeler, `python -m t2idemo label`) ...
    loop.judge_agreement(folder, "ana")                              # ana against the judge: agreement, kappa
    loop.train_reward_on_labels(folder, "runs/app/reward", cfg)      # seconds: held-out accuracy and AUC
    loop.tune_on_labels(folder, "runs/app/reward", "runs/app/mine", cfg)  # the main job's recipe, short
    loop.quick_eval({"base": base_pipe, "yours": tuned_pipe}, cfg)   # the judge on unseen combinations

Every step is the main job's (``python -m t2idemo run``), at a size that takes seconds to a minute or two on two
CPU cores: the labelling images are drawn like its feedback images (seen prompts, its sampler settings), the
reward model is the same head on the same frozen CLIP, trained on the majority vote of everyone's labels, and
the fine-tune is the main job's (the filtered recipe, beta, lr) with fewer steps and smaller batches. Every
stage's config comes from ``runconfig.round_configs`` on ``main_job(cfg)``: the main job's preset with the app's
sizes as overrides, round 0 (its seeds are the app's seed).
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass

from . import world
from .config import check_ranges, ranged
from .generate import BASE_MODEL, generate_dataset, image_row, image_seed, sample
from .data import load_rows, save_png, write_rows_atomic
from .labels import LabelStore, agreement_stats, default_store_path, export_labels
from .runconfig import RoundFolders, RunConfig, preset, round_configs


@dataclass
class LoopConfig:
    model: str = BASE_MODEL  # the pipeline that draws the labelling images and is tuned
    batch_images: int = ranged(24, 1, 64)  # images per labelling batch; 1 - 64
    unlabelled_per_prompt: int = ranged(4, 0, 16)  # extra generations per labelled prompt, pseudo-labelled by the reward model; 0 - 16
    train_steps: int = ranged(60, 1, 400)  # fine-tune optimiser steps; 1 - 400 (the main job: 400 at batch 64)
    batch: int = ranged(16, 4, 64)  # D_model and D_pre images per fine-tune step; 4 - 64
    reward_epochs: int = ranged(100, 10, 300)  # at most this many passes of the reward head over the labels; 10 - 300
    eval_images: int = ranged(64, 0, 512)  # after the fine-tune: unseen combination images per model, base vs tuned; 0 (skip) - 512
    seed: int = ranged(0, 0, 1_000_000_000)  # seeds the prompts, the images, the reward model and the fine-tune

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range


def main_job(cfg: LoopConfig) -> RunConfig:
    """The main job's config (``preset("shapes")``: its sampler settings, reward model and fine-tune recipe) at the
    app's size: LoopConfig's fields as overrides, nothing else changed."""
    main = preset("shapes")
    return preset("shapes", model=cfg.model, seed=cfg.seed, unlabelled_per_prompt=cfg.unlabelled_per_prompt, **{
        "reward.max_epochs": cfg.reward_epochs, "reward.patience": 10, "reward.val_frac": 0.25,
        "finetune.train_steps": cfg.train_steps, "finetune.batch": cfg.batch, "finetune.pre_batch": cfg.batch,
        "finetune.pre_pool": min(main.finetune.pre_pool, cfg.train_steps * cfg.batch)})


def app_round(cfg: LoopConfig, folder: str, reward: str, out: str = ""):
    """Every stage's config for the app's round (round 0): labels in ``folder``, the reward model in ``reward``,
    the unlabelled images in OUT/unlabelled and the tuned pipeline in OUT/model."""
    folders = RoundFolders(feedback=folder, reward_data=folder, reward=reward,
                           unlabelled=os.path.join(out, "unlabelled"), aligned=os.path.join(out, "model"))
    return round_configs(main_job(cfg), 0, cfg.model, folders)


# ----------------------------------------------------------------------------- 1. a batch to label
def draw_labelling_batch(pipe, folder: str, cfg: LoopConfig, model_name: str = "") -> list[dict]:
    """Append ``cfg.batch_images`` images of random seen prompts, drawn by ``pipe``, to the imagefolder ``folder``
    (created if needed). Batch b's images are b{b:03d}_{i:03d}.png. Returns the new rows. Not safe against a
    second writer of the same folder at the same moment: the app calls it under its sampling lock."""
    os.makedirs(folder, exist_ok=True)
    rows = load_rows(folder, missing_ok=True)
    b = 1 + max((int(r.get("batch", 0)) for r in rows), default=0)
    rng = random.Random(f"{cfg.seed}:{b}")
    pairs = world.all_prompts(unseen=False)  # the feedback prompts; the unseen ones stay held out
    chosen = [rng.choice(pairs) for _ in range(cfg.batch_images)]
    seeds = [image_seed(cfg.seed + b, i) for i in range(cfg.batch_images)]
    gen = main_job(cfg).generate  # the main job's feedback sampler settings
    images = sample(pipe, [p for p, _ in chosen], seeds, gen.sample_steps, gen.guidance, batch_size=cfg.batch_images)
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
def train_reward_on_labels(folder: str, out: str, cfg: LoopConfig, lock=None) -> dict:
    """Export the majority vote of everyone's labels into ``folder``'s metadata, train the reward model on them
    (the main job's head and CLIP) into ``out``, and return {"good", "bad", "val_accuracy", "val_auc", "n_val"}:
    accuracy (r >= 0.5 means good) and AUC on the prompts held out of its training. ``lock``: held while the
    metadata is rewritten, if another thread may append to it (the app's Draw button)."""
    from contextlib import nullcontext

    from .reward import read_saved
    from .reward_train import split_by_prompt
    from .data import load_images, load_rows
    from .reward_train import train as train_reward

    with lock or nullcontext():
        counts = export_labels(folder)  # label = the majority vote; ties, skips and unlabelled images get None
    if counts["good"] < 2 or counts["bad"] < 2:
        raise ValueError(f"the reward model needs at least 2 good and 2 bad labels; there are {counts['good']} good "
                         f"and {counts['bad']} bad so far: label more images")
    rcfg = app_round(cfg, folder, out).reward
    model = train_reward(rcfg)
    rows = [r for r in load_rows(folder) if r.get("label") in ("good", "bad")]
    _, val = split_by_prompt(rows, rcfg.val_frac, rcfg.seed)  # the prompts its early stopping held out
    rows = [rows[i] for i in val]
    scores = model(load_images(folder, rows), [r["prompt"] for r in rows]).tolist() if rows else []
    right = [(s >= 0.5) == (r["label"] == "good") for s, r in zip(scores, rows)]
    summary = read_saved(out).get("training", {})
    return {"good": counts["good"], "bad": counts["bad"], "n_val": len(rows),
            "val_accuracy": 100.0 * sum(right) / len(right) if right else None, "val_auc": summary.get("val_auc")}


# ----------------------------------------------------------------------------- 4. the fine-tune
def tune_on_labels(folder: str, reward: str, out: str, cfg: LoopConfig, pipe=None, should_stop=None) -> str:
    """The main job's steps 4 and 5 at app size: ``cfg.unlabelled_per_prompt`` more images of every labelled prompt,
    scored by the reward model in ``reward``, then the main job's fine-tune (its recipe,
    beta, lr) for ``cfg.train_steps`` steps of ``cfg.batch`` images. Writes the pipeline to OUT/model and
    returns that folder. ``should_stop`` cancels it (finetune.Cancelled)."""
    from .finetune import finetune

    rows = [r for r in load_rows(folder, missing_ok=True) if r.get("label") in ("good", "bad")]
    if not rows:
        raise ValueError("no labelled images in the labelling set yet; label some and train the reward model first")
    rnd = app_round(cfg, folder, reward, out)
    if rnd.unlabelled:  # the main job's unlabelled generations, of the labelled prompts only
        prompts = sorted({r["prompt"] for r in rows})
        generate_dataset(dataclasses.replace(rnd.unlabelled, prompts="|".join(prompts)), pipe)
    (fcfg,) = rnd.finetune.values()
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
