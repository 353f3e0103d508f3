"""What a push uploads (``t2idemo.hub.push``): the staging folders of links, the labels dataset with its statistics,
and the model and dataset cards.

Labelers who did not agree to be named (``t2idemo.consent``) appear under pseudonyms ('labeler 1', ...) in the
dataset and the cards.
"""

from __future__ import annotations

import json
import os
import shutil

from .data import load_rows
from .generate import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .label_store import MAJORITY, LabelStore, default_store_path
from .labels import export_labels
from .reward import CONFIG_FILE as REWARD_CONFIG_FILE
from .reward import resolve_clip

IGNORE = shutil.ignore_patterns("checkpoint", "checkpoint-*", "__pycache__", ".*", "*.sqlite", "*.sqlite-*")


# ----------------------------------------------------------------------------- staging folders
def _link(source: str, target: str) -> None:
    """A symbolic link ``target`` -> ``source`` (absolute), or a copy where links are refused."""
    try:
        os.symlink(os.path.abspath(source), target)
    except OSError:
        shutil.copy2(source, target)


def link_tree(src: str, dst: str) -> int:
    """Mirror ``src`` into ``dst`` with a symbolic link per file (a copy where links are refused), skipping
    checkpoints, hidden files and label stores. Returns the number of files."""
    n = 0
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(set(dirs) - IGNORE(root, dirs))
        out = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for name in sorted(set(files) - IGNORE(root, files)):
            _link(os.path.join(root, name), os.path.join(out, name))
            n += 1
    return n


def pseudonyms(labelers) -> dict:
    """{name: 'labeler k'} in sorted order: what the Hub gets when labelers did not agree to be named."""
    return {who: f"labeler {k}" for k, who in enumerate(sorted(labelers), 1)}


def aliases(labelers, names=True) -> dict:
    """{labeler: the name the Hub gets}: ``names`` True names everyone, False no one, a set those in it; the
    others get pseudonyms."""
    named = set(labelers) if names is True else set(names or ())
    alias = pseudonyms(set(labelers) - named)
    return {who: alias.get(who, who) for who in labelers}


def label_stats(data_dir: str, names=True) -> dict:
    """What the label store of ``data_dir`` holds: images, per-labeler counts, pairwise agreement, majority.
    Labelers not named by ``names`` (see ``aliases``) appear under a pseudonym."""
    rows = load_rows(data_dir, missing_ok=True)
    with LabelStore(default_store_path(data_dir)) as store:
        per = store.labels()
        majority = store.majority()
        pairs = [(a, b, store.agreement(a, b)) for i, a in enumerate(sorted(per)) for b in sorted(per)[i + 1 :]]
    if names is not True:
        alias = aliases(per, names)
        per = {alias[who]: labels for who, labels in per.items()}
        pairs = [(alias[a], alias[b], ag) for a, b, ag in pairs]
    names = {r["file_name"] for r in rows}
    return {
        "images": len(rows),
        "labelled": len(names & {i for labels in per.values() for i in labels}),
        "labelers": {
            who: {k: sum(v == k for i, v in labels.items() if i in names) for k in ("good", "bad", "skip")}
            for who, labels in sorted(per.items())
        },
        "majority": {k: sum(majority.get(n) == k for n in names) for k in ("good", "bad")},
        "agreement": [{"a": a, "b": b, **ag} for a, b, ag in pairs],
    }


def stage_dataset(data_dir: str, out: str, names=True) -> dict:
    """Write the labels dataset into ``out``: data/ (images + metadata.jsonl with the majority "label") and
    labels/labels.jsonl (every labeler's current label; those not named by ``names``, see ``aliases``, under
    pseudonyms). The source dataset is left untouched."""
    rows = load_rows(data_dir, missing_ok=True)
    if not rows:
        raise ValueError(f"data={data_dir!r} has no metadata.jsonl rows; generate the dataset first")
    os.makedirs(os.path.join(out, "data"))
    for row in rows:
        _link(os.path.join(data_dir, row["file_name"]), os.path.join(out, "data", row["file_name"]))
    with open(os.path.join(out, "data", "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    store_path = default_store_path(data_dir)
    export_labels(os.path.join(out, "data"), store_path, MAJORITY)  # the same export the notebooks use
    os.makedirs(os.path.join(out, "labels"))
    with (
        LabelStore(store_path) as store,
        open(os.path.join(out, "labels", "labels.jsonl"), "w", encoding="utf-8") as f,
    ):
        records, alias = store.records(), aliases(store.labelers(), names)
        f.writelines(json.dumps({**r, "labeler": alias[r["labeler"]]}) + "\n" for r in records)
    return label_stats(data_dir, names)


# ----------------------------------------------------------------------------- cards
def _front_matter(fields: dict) -> str:
    """YAML front matter from flat fields (strings, bools, lists of strings); JSON scalars are valid YAML."""
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {json.dumps(v, ensure_ascii=False)}" for v in value)
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines + ["---", ""])


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _labels_section(stats: dict, dataset_id: str | None) -> list:
    if not stats:
        return []
    lines = [
        "## Feedback labels",
        "",
        f"{stats['labelled']} of {stats['images']} images labelled by {len(stats['labelers'])} labeler(s); "
        f"majority vote: {stats['majority']['good']} good, {stats['majority']['bad']} bad"
        + (f" (dataset: [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))." if dataset_id else "."),
        "",
        "| labeler | good | bad | skip |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {who} | {c['good']} | {c['bad']} | {c['skip']} |" for who, c in stats["labelers"].items()]
    for ag in stats["agreement"]:
        if ag["n"]:
            lines.append(
                f"\nAgreement {ag['a']} vs {ag['b']}: {ag['n']} images, {ag['percent']:.1f}%, "
                f"Cohen's kappa {ag['kappa']:.3f}."
            )
    return lines + [""]


def _finetune_section(finetune: dict) -> list:
    """The model card's fine-tuning settings (finetune.json of the model folder); [] for a base model."""
    lines = []
    if finetune:
        cfg = finetune.get("config", {})
        lines += [
            "## Fine-tuning",
            "",
            "Reward-weighted loss (the paper's eq. 2), settings of `python -m t2idemo finetune`:",
            "",
            "| setting | value |",
            "| --- | --- |",
        ]
        # the settings shown ("steps": older files)
        shown = ("weight", "top_k", "min_reward", "beta", "train_steps", "steps", "train", "batch", "lr", "seed")
        # the base model by its name, no local path
        lines += [f"| base model | {os.path.basename(os.path.normpath(cfg.get('model', '')))} |"]
        lines += [f"| {k} | {v} |" for k, v in cfg.items() if k in shown]
        lines += [
            f"| images weighted | {finetune.get('n_model')} (mean weight {finetune.get('mean_weight', 0):.3f}) |",
            "",
        ]
    return lines


def _reward_section(repo_id: str, reward: dict) -> list:
    """The model card's reward model: what r(x, z) is and how to load it from the repo; [] without one."""
    lines = []
    if reward:
        training = reward.get("training", {})
        # older files kept every setting under "config"
        cfg = {**reward.get("config", {}), **training.get("config", {})}
        clip = reward.get("clip", "")
        about = (
            "a frozen CLIP's check of each attribute the prompt names (count, colour, shape, scene) and a "
            f"logistic head calibrated on {training.get('n_labels')} labels (t2idemo.reward_attr)"
            if reward.get("kind") == "attribute"
            else "a frozen CLIP and an MLP head on its image and text embeddings, trained with MSE plus the "
            f"prompt-classification term (lambda = {cfg.get('lam')}, N = {cfg.get('n_prompts')})"
        )
        lines += [
            "## Reward model",
            "",
            f"`reward/` holds r(x, z) in [0, 1]: {about}"
            + (f"; validation AUC {training['val_auc']}" if training.get("val_auc") else "")
            + ".",
            "",
            "```python",
            "from huggingface_hub import snapshot_download",
            "from t2idemo.reward import load_reward_fn  # pip install t2idemo",
            "",
            f'path = snapshot_download("{repo_id}")',
            'reward = load_reward_fn(f"{path}/reward"'
            + (', clip=f"{path}/reward/clip")' if _local_clip(clip) else ")"),
            'scores = reward(images, ["three purple circles on grass"] * len(images))  # PIL images -> (N,)',
            "```",
            "",
        ]
    return lines


def _eval_section(model_dir: str) -> list:
    """The model card's judge figures on unseen combinations (eval.json of the model folder); [] without them."""
    lines = []
    scores = _read_json(os.path.join(model_dir, "eval.json")).get("unseen_combinations_all_right", {})
    if scores:
        lines += [
            "## Evaluation",
            "",
            "The shapes world's judge on combination prompts held out of the feedback (unseen), one image per "
            "prompt at fixed seeds, default sampler; all four named attributes right, [Wilson 95% CI]:",
            "",
            "| model | all right |",
            "| --- | --- |",
        ]
        lines += [
            f"| {name} | {100 * r['p']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] of {r['n']} |"
            for name, r in scores.items()
        ]
        lines += [""]
    return lines


def model_card(
    repo_id: str, model_dir: str, reward_dir: str = "", stats: dict | None = None, dataset_id: str | None = None
) -> str:
    """The README.md of the model repo: front matter, how to load, what was fine-tuned, reward model, labels."""
    finetune = _read_json(os.path.join(model_dir, "finetune.json"))
    reward = _read_json(os.path.join(reward_dir, REWARD_CONFIG_FILE)) if reward_dir else {}
    meta = {
        "license": "apache-2.0",
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["t2idemo", "text-to-image", "stable-diffusion", "human-feedback", "reward-model", "shapes-world"],
    }
    if dataset_id:
        meta["datasets"] = [dataset_id]
    kind = "fine-tuned with human feedback" if finetune else "of the shapes world"
    lines = [
        _front_matter(meta),
        f"# {repo_id}",
        "",
        f"A tiny Stable-Diffusion-like text-to-image pipeline {kind}, made with "
        "t2idemo, a tutorial kit that reproduces *Aligning Text-to-Image Models using "
        "Human Feedback* (Lee et al. 2023, [arXiv 2302.12192](https://arxiv.org/abs/2302.12192)) in the "
        "*shapes world*: 32x32 images of one to four coloured circles, squares or triangles on a flat scene.",
        "",
        "## Use",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "",
        f'pipe = StableDiffusionPipeline.from_pretrained("{repo_id}")',
        f'image = pipe("three purple circles on grass", num_inference_steps={DEFAULT_STEPS}, '
        f"guidance_scale={DEFAULT_GUIDANCE}).images[0]  # 32x32",
        "```",
        "",
        "Prompts must use the world's words: counts one to four, colours red, green, blue, yellow, purple, "
        "orange, shapes circle, square, triangle, and 'on' sky, sand, grass, night or snow.",
        "",
    ]
    lines += _finetune_section(finetune) + _reward_section(repo_id, reward) + _eval_section(model_dir)
    lines += _labels_section(stats or {}, dataset_id)
    lines += [
        "## Limitations",
        "",
        "It draws 32x32 shapes-world images and nothing else; it is a teaching model, not a general one.",
        "",
    ]
    return "\n".join(lines)


def dataset_card(dataset_id: str, stats: dict, model_id: str | None = None) -> str:
    """The README.md of the labels dataset repo."""
    meta = {
        "license": "apache-2.0",
        "task_categories": ["text-to-image"],
        "tags": ["t2idemo", "human-feedback", "shapes-world"],
    }
    lines = [
        _front_matter(meta),
        f"# {dataset_id}",
        "",
        "Images drawn by a shapes-world text-to-image model and good/bad labels given by people (or the "
        "simulated labeler) in t2idemo's label store"
        + (f", for [{model_id}](https://huggingface.co/{model_id})." if model_id else "."),
        "",
        "- `data/`: the images and `metadata.jsonl`, one row per image: prompt, category, the attributes "
        "it names, seed, sampler settings and `label`, the majority vote of the labelers (null when "
        "nobody labelled the image or the vote is tied; skips do not vote).",
        "- `labels/labels.jsonl`: every labeler's current label, `{image_id, labeler, label, ts}`.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{dataset_id}", data_dir="data")',
        "```",
        "",
    ]
    return "\n".join(lines + _labels_section(stats, None))


def _local_clip(clip: str) -> bool:
    return bool(clip) and os.path.isdir(resolve_clip(clip))


def stage_model(model_dir: str, reward_dir: str, out: str) -> int:
    """The model repo's files (without the card) in ``out``; returns the number of files."""
    n = link_tree(model_dir, out)
    if reward_dir:
        n += link_tree(reward_dir, os.path.join(out, "reward"))
        clip = _read_json(os.path.join(reward_dir, REWARD_CONFIG_FILE)).get("clip", "")
        if _local_clip(clip):  # the frozen CLIP goes along, so reward/ loads without t2idemo's assets
            n += link_tree(resolve_clip(clip), os.path.join(out, "reward", "clip"))
    return n
