"""The notebooks' ``SCALE`` switch: one place for the model ids and the sizes of every stage.

    from t2idemo import scales
    S = scales.settings("shapes")     # the tiny shapes world on a CPU (the default)
    S = scales.settings("sd15")       # Stable Diffusion v1.5 + CLIP ViT-L/14 on a GPU (Colab)
    P = scales.paths(S)               # where each stage writes: runs/nb/shapes/feedback, .../reward, ...

The switch changes model and CLIP ids and sizes, nothing else: every notebook calls the same library
functions at both scales. Two things follow from the data rather than from a choice: the judge (the simulated
labeler) reads only the shapes world, so at SD scale people label in the widget (``rater = "people"``), and the
pre-training term of the fine-tune loss needs images: fresh renders of the world, or at SD scale a set drawn
from the base model (``pretrain_data``).

``small`` (default: the environment variable ``T2IDEMO_SMALL=1``) shrinks every size so that CI executes each
notebook in well under two minutes on a CPU; the numbers then only show that the code runs.

The ``ensure_*`` helpers let each notebook run on its own: they make the feedback set, its labels and the
reward model from the settings when an earlier notebook has not left them in the work folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .generate import BASE_MODEL, DEFAULT_GUIDANCE
from .reward import RewardConfig

SCALES = ("shapes", "sd15")
WORK_ENV = "T2IDEMO_WORK"  # environment variable: the notebooks' work folder (default runs/nb)
SMALL_ENV = "T2IDEMO_SMALL"  # environment variable: 1 shrinks every size (CI)


@dataclass(frozen=True)
class Scale:
    name: str  # "shapes" | "sd15"
    small: bool  # True: the CI sizes (T2IDEMO_SMALL=1)
    # models
    model: str  # base StableDiffusionPipeline: a folder or a hub id
    clip: str  # the reward model's frozen CLIP: a shipped one ("tiny-reward-clip", "tiny-clip"), a folder or a hub id
    prompt_set: str  # "shapes" (t2idemo.world) | "sd" (the paper's prompts, t2idemo.sd)
    rater: str  # "judge": the simulated labeler labels every image | "people": you label in the widget
    # stage 1: feedback (generate.GenerateConfig)
    feedback_prompts: int  # seen prompts in the feedback set (max_prompts; 0 = all 242 of the shapes world)
    per_prompt: int  # images per feedback prompt, each from its own seed
    heldout_prompts: int  # unseen prompts in the reward model's held-out test set (0 = all 163)
    heldout_per_prompt: int  # images per held-out prompt
    sample_steps: int  # sampler steps
    guidance: float  # classifier-free guidance scale
    gen_batch: int  # images per pipeline call (GPU memory bound at SD scale)
    # stage 2: reward model (reward.RewardConfig)
    noise_levels: str  # label-flip probabilities of the noise study
    n_boot: int  # bootstrap resamples for the AUC confidence intervals
    # stage 3: fine-tuning (finetune.FinetuneConfig; the SD values are t2idemo/sd.py's 16 GB plan)
    unlabelled_per_prompt: int  # extra generations per feedback prompt, weighted by the reward model (0 = none)
    pretrain_data: str  # D_pre: "world" (fresh renders) | "generate" (a set drawn from the base model, SD scale)
    pretrain_prompts: int  # prompts of that drawn set (one image each); unused for "world"
    ft_steps: int  # optimizer steps
    ft_batch: int  # D_model images per step
    pre_batch: int  # D_pre images per step
    encode_batch: int  # images per frozen VAE / text-encoder call when caching D_model
    lr: float  # AdamW learning rate
    lora_rank: int  # 0 = fine-tune the whole UNet (tiny model); 8 = a LoRA adapter (SD)
    mixed_precision: str  # "no" | "fp16" (a T4) | "bf16"
    gradient_checkpointing: bool  # trade compute for UNet activation memory (SD)
    betas: str  # beta values of the trade-off sweep in 04 (comma-separated)
    # evaluation (evaluate.EvalConfig for the shapes world; people's labels + evaluate.summary at SD scale)
    n_combination: int  # unseen combination-prompt images per model
    n_single: int  # unseen images per model for each single-attribute category
    best_of: str  # N values of the best-of-N (rejection sampling) baseline; "" = none
    n_best_of: int  # combination prompts for best-of-N
    grid_prompts: tuple  # prompts of the side-by-side grids

    def replace(self, **changes) -> "Scale":
        """A copy with some fields changed, e.g. ``S.replace(ft_steps=50)``."""
        return dataclasses.replace(self, **changes)

    @property
    def judge(self) -> bool:
        """True where the judge can rate images (the shapes world): simulated labels, judge-based evaluation."""
        return self.rater == "judge"


SHAPES_GRID = ("two circles", "a red square", "a triangle on snow", "three purple circles on grass",
               "a blue circle on night", "two green squares on sand")
SD_GRID = ("two dogs", "a green colored dog", "a cat on the moon", "two blue dogs in the forest")

_FULL = {
    "shapes": dict(
        model=BASE_MODEL, clip=RewardConfig.clip, prompt_set="shapes", rater="judge",  # the library's reward backbone
        feedback_prompts=0, per_prompt=2, heldout_prompts=0, heldout_per_prompt=2,
        sample_steps=15, guidance=DEFAULT_GUIDANCE, gen_batch=64,
        noise_levels="0,0.1,0.2,0.3", n_boot=1000,
        unlabelled_per_prompt=2, pretrain_data="world", pretrain_prompts=0,
        ft_steps=120, ft_batch=32, pre_batch=32, encode_batch=256, lr=1e-4,
        lora_rank=0, mixed_precision="no", gradient_checkpointing=False, betas="0,1",
        n_combination=96, n_single=32, best_of="4", n_best_of=32, grid_prompts=SHAPES_GRID),
    "sd15": dict(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5", clip="openai/clip-vit-large-patch14", prompt_set="sd",
        rater="people",
        feedback_prompts=100, per_prompt=4, heldout_prompts=50, heldout_per_prompt=2,
        sample_steps=30, guidance=7.5, gen_batch=8,
        noise_levels="0,0.1,0.2", n_boot=1000,
        unlabelled_per_prompt=0, pretrain_data="generate", pretrain_prompts=400,
        ft_steps=1000, ft_batch=4, pre_batch=4, encode_batch=8, lr=1e-4,
        lora_rank=8, mixed_precision="fp16", gradient_checkpointing=True, betas="0,1",
        n_combination=64, n_single=16, best_of="", n_best_of=16, grid_prompts=SD_GRID),
}
_SMALL = {  # T2IDEMO_SMALL=1: the same code on a few images, so CI executes a notebook in well under two minutes
    "shapes": dict(feedback_prompts=48, per_prompt=2, heldout_prompts=32, heldout_per_prompt=2, sample_steps=10,
                   noise_levels="0,0.3", n_boot=200, unlabelled_per_prompt=1, ft_steps=12, ft_batch=16,
                   pre_batch=16, betas="0,1", n_combination=24, n_single=8, best_of="2", n_best_of=8,
                   grid_prompts=SHAPES_GRID[:4]),
    "sd15": dict(feedback_prompts=8, per_prompt=2, heldout_prompts=8, heldout_per_prompt=2, sample_steps=10,
                 noise_levels="0,0.2", n_boot=200, pretrain_prompts=16, ft_steps=10, betas="1",
                 n_combination=8, n_single=2, grid_prompts=SD_GRID[:2]),
}


def is_small(small: bool | None = None) -> bool:
    """``small``, or when it is None the environment variable T2IDEMO_SMALL (1, true, yes or on)."""
    if small is not None:
        return bool(small)
    return os.environ.get(SMALL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def settings(scale: str = "shapes", small: bool | None = None) -> Scale:
    """The settings of ``scale`` ("shapes" or "sd15"); ``small`` None reads T2IDEMO_SMALL."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {SCALES}: 'shapes' runs on a CPU, 'sd15' needs a GPU")
    small = is_small(small)
    return Scale(name=scale, small=small, **{**_FULL[scale], **(_SMALL[scale] if small else {})})


@dataclass(frozen=True)
class Paths:
    """Where the notebooks' stages read and write, all under one work folder."""
    work: str  # the work folder of this scale and size
    feedback: str  # stage 1: the labelled feedback set (imagefolder + labels.sqlite)
    heldout: str  # stage 2: images of unseen prompts, the reward model's test set
    reward: str  # stage 2: the reward model (head.safetensors + reward_config.json)
    unlabelled: str  # stage 3: extra generations, weighted by the reward model
    pretrain: str  # stage 3 at SD scale: D_pre drawn from the base model
    aligned: str  # stage 3: the fine-tuned pipeline folder
    report: str  # evaluation reports


def paths(S: Scale, run: str = "", work: str | None = None) -> Paths:
    """The folders of ``S`` under ``work`` (default: $T2IDEMO_WORK, else runs/nb): WORK/<scale>[-small]/<run>/, one
    folder per scale and size (a small run never resumes into a full one) and per ``run`` ("" for the stage
    notebooks 01-04, which share their folders; "quickstart" for 00)."""
    root = work or os.environ.get(WORK_ENV) or os.path.join("runs", "nb")
    w = os.path.normpath(os.path.join(root, S.name + ("-small" if S.small else ""), run))
    return Paths(work=w, **{k: os.path.join(w, k) for k in
                            ("feedback", "heldout", "reward", "unlabelled", "pretrain", "aligned", "report")})


# ----------------------------------------------------------------------------- notebook plumbing
def feedback_config(S: Scale, out: str, split: str = "seen", seed: int = 0, max_prompts: int | None = None,
                    per_prompt: int | None = None, model: str | None = None):
    """The GenerateConfig of a set drawn from ``model`` (default ``S.model``) at ``S``'s sampler settings."""
    from .generate import GenerateConfig

    return GenerateConfig(out=out, model=model or S.model, prompt_set=S.prompt_set, split=split, seed=seed,
                          max_prompts=S.feedback_prompts if max_prompts is None else max_prompts,
                          per_prompt=S.per_prompt if per_prompt is None else per_prompt,
                          steps=S.sample_steps, guidance=S.guidance, batch_size=S.gen_batch)


def _labelled(folder: str) -> bool:
    from .data import load_dataset_rows

    return any(r.get("label") in ("good", "bad") for r in load_dataset_rows(folder))


def ensure_feedback(S: Scale, P: Paths, pipe=None) -> str:
    """The labelled feedback set of notebook 01: drawn and labelled by the judge here if it is not there yet."""
    from .generate import generate_dataset
    from .labels import export_labels, simulate_labels

    if os.path.isdir(P.feedback) and _labelled(P.feedback):
        return P.feedback
    if not S.judge:
        raise ValueError(f"{P.feedback} holds no labels yet; at SD scale people label it: run notebook 01 first")
    generate_dataset(feedback_config(S, P.feedback), pipe)
    simulate_labels(P.feedback, labeler="judge")
    export_labels(P.feedback, labeler="judge")
    return P.feedback


def ensure_heldout(S: Scale, P: Paths, pipe=None) -> str:
    """The held-out (unseen-prompt) test set of notebook 02, drawn here if it is not there yet."""
    from .generate import generate_dataset

    generate_dataset(feedback_config(S, P.heldout, split="unseen", seed=1, max_prompts=S.heldout_prompts,
                                     per_prompt=S.heldout_per_prompt), pipe)
    return P.heldout


def reward_config(S: Scale, P: Paths, **changes):
    """The RewardConfig of notebook 02 (the paper's lambda = 0.5, N = 4), with ``changes`` on top."""
    return RewardConfig(**{"clip": S.clip, "data": P.feedback, "run": P.reward, "eval_data": P.heldout,
                           "n_boot": S.n_boot, "noise_levels": S.noise_levels, **changes})


def ensure_reward(S: Scale, P: Paths) -> str:
    """The reward model of notebook 02, trained here (on the labelled feedback set) if it is not there yet."""
    from .reward import CONFIG_FILE
    from .reward_train import train

    if not os.path.isfile(os.path.join(P.reward, CONFIG_FILE)):
        train(reward_config(S, P, data=ensure_feedback(S, P)))
    return P.reward


def pretrain_data(S: Scale, P: Paths, pipe=None) -> str:
    """D_pre of the fine-tune loss: "world" (fresh renders) in the shapes world; at SD scale a set of
    ``S.pretrain_prompts`` images drawn from the base model over every prompt of the set (a stand-in for LAION
    that keeps the tuned model near the base model's own distribution)."""
    from .generate import generate_dataset

    if S.pretrain_data == "world":
        return "world"
    generate_dataset(feedback_config(S, P.pretrain, split="all", seed=2, max_prompts=S.pretrain_prompts,
                                     per_prompt=1), pipe)
    return P.pretrain


def finetune_config(S: Scale, P: Paths, **changes):
    """The FinetuneConfig of notebook 03 (reward-weighted, the paper's default), with ``changes`` on top."""
    from .finetune import FinetuneConfig

    unl = P.unlabelled if S.unlabelled_per_prompt and os.path.isfile(os.path.join(P.unlabelled, "metadata.jsonl")) else ""
    return FinetuneConfig(**{
        "data": P.feedback, "out": P.aligned, "model": S.model, "reward": P.reward, "weight": "reward",
        "unlabelled": unl, "pretrain_data": "world" if S.pretrain_data == "world" else P.pretrain,
        "steps": S.ft_steps, "batch": S.ft_batch, "pre_batch": S.pre_batch, "encode_batch": S.encode_batch,
        "lr": S.lr, "lora_rank": S.lora_rank, "mixed_precision": S.mixed_precision,
        "gradient_checkpointing": S.gradient_checkpointing, "checkpoint_every": 0, **changes})


# The main job (t2idemo.run) and the over-optimisation curve (t2idemo.overopt) at each size: the full shapes size is
# their own defaults, the figures the README quotes; small changes sizes only (notebook 05 in CI)
_SMALL_RUN = dict(max_prompts=12, per_prompt=4, unlabelled_per_prompt=1, steps=6, n_combination=16, n_single=4)
_SMALL_OVEROPT = dict(steps="0,2,6", n_combination=16, n_single=8)


def ensure_run(S: Scale, P: Paths, name: str = "main", **changes) -> dict:
    """The results of ``python -m t2idemo run`` (with ``changes``) in WORK/NAME, run here unless a finished run with
    the same config is there. The main job needs the judge: shapes world only."""
    import json

    from .run import RunConfig, run

    if not S.judge:
        raise ValueError(f"scale={S.name!r}: the main job labels with the judge, which reads only the shapes world; "
                         "use scale='shapes'")
    cfg = RunConfig(**{"out": os.path.join(P.work, name), **(_SMALL_RUN if S.small else {}), **changes})
    done = os.path.join(cfg.out, "report", "results.json")
    if os.path.isfile(done) and json.load(open(done)).get("run_config") == dataclasses.asdict(cfg):
        return json.load(open(done))
    return run(cfg)


def overopt_config(S: Scale, run: str, **changes):
    """The OveroptConfig of the curve on the finished run folder ``run`` (its defaults at the full size)."""
    from .overopt import OveroptConfig

    return OveroptConfig(**{"run": run, **(_SMALL_OVEROPT if S.small else {}), **changes})


def result(**values) -> None:
    """Print one machine-readable line, ``RESULT key=value ...``, that tests/test_notebooks.py reads from the
    executed notebook (floats to 4 significant digits; values must not contain spaces)."""
    print("RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


def strip_outputs(path: str) -> bool:
    """Clear a notebook's outputs, execution counts and saved widget state in place, which is how notebooks are
    kept in git (tests/test_notebooks.py checks it). Returns True if the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)
    return after != before


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "strip":
        print("usage: python -m t2idemo.scales strip NOTEBOOK.ipynb ...   (clear outputs before committing)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    for path in argv[1:]:
        print(("stripped " if strip_outputs(path) else "clean    ") + path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
