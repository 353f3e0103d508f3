"""Share a run on the Hugging Face Hub: the model folder, the reward model, the labels dataset and a model card.

    HF_TOKEN=hf_... python -m t2idemo push --repo-id alice/t2idemo-aligned --model runs/aligned \\
        --reward runs/reward --data data/feedback

What goes where (the Gradio app's Share tab calls the same ``push``):

    model repo   REPO_ID           the StableDiffusionPipeline folder at the root (diffusers loads it as is),
                                   reward/ (the reward head, its config and, when it is a local folder, its
                                   frozen CLIP in reward/clip/), README.md (the model card written here)
    dataset repo REPO_ID           data/ (the images and metadata.jsonl, whose "label" field is the majority
                 (type dataset)    vote of the label store), labels/labels.jsonl (every labeler's current
                                   label), README.md (the dataset card written here)

A model repo and a dataset repo may share a name on the Hub, so both use REPO_ID. Each repo gets one
commit (``HfApi.upload_folder`` of a staging folder of symbolic links, so nothing large is copied).

The token. It is an argument of ``push`` and nothing else: it is never a config field (configs are
printed), never written to disk (no ``login()``; it goes to ``HfApi(token=...)`` in memory only), never
printed or logged, and any error text is scrubbed of it. The command line reads it from an environment
variable (``--token-env``, default HF_TOKEN), never from a flag that would land in the shell history.
``--endpoint`` (or HF_ENDPOINT) points at another Hub, such as the local fake one of the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from .config import parse_config
from .data import load_rows
from .generate import ALIGNED_MODEL, DEFAULT_GUIDANCE, DEFAULT_STEPS
from .label_store import MAJORITY, LabelStore, default_store_path
from .labels import export_labels
from .reward import CONFIG_FILE as REWARD_CONFIG_FILE
from .reward import REWARD_MODEL, resolve_clip

IGNORE = shutil.ignore_patterns("checkpoint", "checkpoint-*", "__pycache__", ".*", "*.sqlite", "*.sqlite-*")


class PushError(RuntimeError):
    """The Hub refused or failed a push; the message names the step and never holds the token."""


@dataclass
class PushConfig:
    # 'owner/name'; the model repo and the labels dataset repo both get this id
    repo_id: str = ""
    # StableDiffusionPipeline folder pushed at the repo root
    model: str = ALIGNED_MODEL
    # reward model folder (reward_config.json + head); "" pushes none
    reward: str = REWARD_MODEL
    # dataset folder whose labels.sqlite is exported as the labels dataset; "" pushes none
    data: str = ""
    # create the repos private (an existing repo keeps its visibility)
    private: bool = False
    # push the labelers' names with their labels; False replaces them by 'labeler 1', ...
    # (the app passes the set of labelers who agreed themselves: only they are named)
    labeler_names: bool = True
    # Hub URL; "" = huggingface_hub's default (HF_ENDPOINT, else https://huggingface.co)
    endpoint: str = ""
    # CLI only: the environment variable holding the token (never the token itself)
    token_env: str = "HF_TOKEN"

    def __post_init__(self):
        check_repo_id(self.repo_id)
        if not os.path.isfile(os.path.join(self.model, "model_index.json")):
            raise ValueError(
                f"model={self.model!r} is not a StableDiffusionPipeline folder (no model_index.json); "
                f"pass the folder of a trained pipeline, e.g. t2idemo/assets/tiny-sd"
            )
        if self.reward and not os.path.isfile(os.path.join(self.reward, REWARD_CONFIG_FILE)):
            raise ValueError(
                f"reward={self.reward!r} holds no {REWARD_CONFIG_FILE}; pass a folder written by "
                f"`python -m t2idemo reward train`, or '' to push no reward model"
            )
        if self.data and not os.path.isfile(default_store_path(self.data)):
            raise ValueError(
                f"data={self.data!r} has no {os.path.basename(default_store_path(self.data))}; label "
                f"some images first (the app's Label tab, the notebook Labeler or `python -m t2idemo "
                f"label`), or pass '' to push no labels"
            )
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint={self.endpoint!r} is not a URL; use e.g. https://huggingface.co, or '' for the default"
            )


def check_repo_id(repo_id) -> str:
    """Return ``repo_id`` if it is 'owner/name' as the Hub allows, else raise a ValueError saying why."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    allowed = (
        "use 'owner/name' with letters, digits, '-', '_' and '.' (no '--' or '..', at most 96 "
        "characters), e.g. 'alice/t2idemo-aligned'"
    )
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} is not allowed; {allowed}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"repo_id={repo_id!r} is not allowed ({e}); {allowed}") from None
    return repo_id


def check_token(token) -> str:
    """Return the stripped token, or raise a ValueError that never echoes it."""
    if not isinstance(token, str) or not token.strip():
        raise ValueError(
            "token is empty; paste a Hugging Face access token with write access "
            "(https://huggingface.co/settings/tokens). It is used for this push only, never saved"
        )
    token = token.strip()
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError("token=<hidden> contains spaces or control characters; paste the token alone")
    return token


def scrub(text: str, token: str | None) -> str:
    """``text`` with every occurrence of the token replaced by '<token>'."""
    return text.replace(token, "<token>") if token else text


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
        shown = (
            "weight",
            "top_k",
            "min_reward",
            "beta",
            "train_steps",
            "steps",
            "train",
            "batch",
            "lr",
            "seed",
        )  # steps: older files
        lines += [
            f"| base model | {os.path.basename(os.path.normpath(cfg.get('model', '')))} |"
        ]  # a name, no local path
        lines += [f"| {k} | {v} |" for k, v in cfg.items() if k in shown]
        lines += [
            f"| images weighted | {finetune.get('n_model')} (mean weight {finetune.get('mean_weight', 0):.3f}) |",
            "",
        ]
    if reward:
        training = reward.get("training", {})
        cfg = {
            **reward.get("config", {}),
            **training.get("config", {}),
        }  # older files kept every setting under "config"
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


# ----------------------------------------------------------------------------- push
def push(cfg: PushConfig, token: str, log=print) -> dict:
    """Create the repos (or reuse them) and upload: one commit to the model repo, one to the dataset repo.
    Returns {"model": url, "dataset": url or None, "files": {"model": n, "dataset": n}}."""
    from huggingface_hub import HfApi, constants

    token = check_token(token)
    if constants.is_offline_mode():
        raise ValueError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so huggingface_hub makes no network "
            "requests; unset it in the environment of this process to push"
        )
    api = HfApi(endpoint=cfg.endpoint or None, token=token, library_name="t2idemo")
    out = {"model": None, "dataset": None, "files": {}}
    step = "staging the files"
    try:
        with tempfile.TemporaryDirectory(prefix="t2idemo-push-") as tmp:
            stats = None
            if cfg.data:
                stats = stage_dataset(cfg.data, os.path.join(tmp, "dataset"), cfg.labeler_names)
                n = sum(len(f) for _, _, f in os.walk(os.path.join(tmp, "dataset")))
                with open(os.path.join(tmp, "dataset", "README.md"), "w", encoding="utf-8") as f:
                    f.write(dataset_card(cfg.repo_id, stats, cfg.repo_id))
                step = f"creating the dataset repo {cfg.repo_id}"
                url = api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private or None, exist_ok=True)
                step = f"uploading {n + 1} files to the dataset repo {cfg.repo_id}"
                log(f"{step} ...")
                api.upload_folder(
                    repo_id=cfg.repo_id,
                    repo_type="dataset",
                    folder_path=os.path.join(tmp, "dataset"),
                    commit_message="Labels from t2idemo's label store",
                )
                out["dataset"], out["files"]["dataset"] = str(url), n + 1
            step, model_dir = "staging the model files", os.path.join(tmp, "model")
            n = stage_model(cfg.model, cfg.reward, model_dir)
            with open(os.path.join(model_dir, "README.md"), "w", encoding="utf-8") as f:
                f.write(model_card(cfg.repo_id, cfg.model, cfg.reward, stats, cfg.repo_id if cfg.data else None))
            step = f"creating the model repo {cfg.repo_id}"
            url = api.create_repo(cfg.repo_id, repo_type="model", private=cfg.private or None, exist_ok=True)
            step = f"uploading {n + 1} files to the model repo {cfg.repo_id}"
            log(f"{step} ...")
            api.upload_folder(
                repo_id=cfg.repo_id,
                repo_type="model",
                folder_path=model_dir,
                commit_message="Model, reward model and card from t2idemo",
            )
            out["model"], out["files"]["model"] = str(url), n + 1
    except Exception as e:  # the Hub's answer, with the token scrubbed; the chain is dropped for the same reason
        raise PushError(scrub(f"push failed while {step}: {type(e).__name__}: {e}", token)) from None
    log(f"pushed {out['model']}" + (f" and {out['dataset']}" if out["dataset"] else ""))
    return out


def main(argv=None):
    cfg = parse_config(
        PushConfig,
        argv,
        prog="python -m t2idemo push",
        description="Push a model folder, its reward model, the labels dataset and a model card to "
        "the Hugging Face Hub. The token is read from the environment variable "
        "--token-env names (HF_TOKEN by default).",
    )
    return run_with_token(push, cfg)


def run_with_token(action, cfg):
    """The push and space commands' ending: ``action(cfg, token)`` with the token read from the environment variable
    ``cfg.token_env`` names (never from the command line, so it stays out of the shell's history), its errors as one
    line (exit status 1)."""
    token = os.environ.get(cfg.token_env, "")
    if not token.strip():
        raise SystemExit(
            f"error: token_env={cfg.token_env!r}: that environment variable is not set or empty; "
            f"export {cfg.token_env}=<a token with write access> (https://huggingface.co/settings/tokens)"
        )
    try:
        return action(cfg, token)
    except (ValueError, PushError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
