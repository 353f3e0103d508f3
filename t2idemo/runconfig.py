"""The main job's config, and the one place where a round's stage configs are derived from it.

    cfg = preset("shapes", recipe="filtered", **{"finetune.lr": 3e-4})   # a RunConfig: one config per stage
    paths = RunPaths(cfg.out)                                             # the run folder's layout
    rnd = round_configs(cfg, r=1, model=cfg.model, folders=paths.round(1))  # every stage's config for round 1

A value reaches a stage in two layers, no more: the stage's own @dataclass default (the main job's value), then
plain override dicts ("stage.field": value): a preset (PRESETS), a fine-tune recipe (RECIPES), and the command
line's ``--stage.field`` flags. What a round sets itself (ROUND_SETS: its folders, the model it
starts from, the seeds it derives from ``--seed``) is never an override: in a RunConfig those folder fields hold
None, ``round_configs`` fills them in, and a stage handed None stops with a one-line error (config.require_set).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .config import SEED_MAX, bounds, build, check_ranges, comma_list, ranged, seed_field
from .eval_config import EvalConfig
from .finetune import FinetuneConfig
from .generate import BASE_MODEL, GenerateConfig
from .labels import LabelConfig
from .reward import RewardConfig

# What each round sets itself, so no preset, recipe or flag may: its folders, the model it starts from, the seeds it
# derives from --seed, the simulated rater's name and store. In a RunConfig the folder and model fields hold None.
ROUND_SETS = frozenset(
    {
        "generate.out",
        "generate.model",
        "generate.split",
        "generate.prompts",
        "generate.seed",
        "labels.data",
        "labels.store",
        "labels.labeler",
        "labels.seed",
        "labels.export",
        "reward.data",
        "reward.run",
        "reward.seed",
        "finetune.data",
        "finetune.out",
        "finetune.model",
        "finetune.reward",
        "finetune.unlabelled",
        "finetune.seed",
        "evaluate.models",
        "evaluate.names",
        "evaluate.reward",
        "evaluate.seed",
        "evaluate.out",
    }
)
# Options of the reward command's own eval and study (`python -m t2idemo reward eval|study`), which the main job does
# not run (it evaluates the tuned models with `evaluate`): no `run` flag; a preset may size them for the notebooks.
NOT_RUN = frozenset({"reward.eval_data", "reward.n_boot", "reward.plot", "reward.noise_levels"})
UNSET = {
    "generate": dict(out=None, model=None),
    "labels": dict(data=None),
    "reward": dict(data=None, run=None),
    "finetune": dict(data=None, out=None, model=None, reward=None),
    "evaluate": dict(models=None, out=None),
}

# The main job's values are the stages' own defaults; a round fills in what UNSET holds. Presets and recipes
# (below) change values by name.


def _stage(cls, name):
    """A stage config as the main job holds it: the stage's defaults, the round's folders None."""
    return field(default_factory=lambda: cls(**UNSET[name]))


@dataclass
class RunConfig:
    # named preset of the starting values: shapes | shapes-long | shapes-small | sd15 | sd15-small
    preset: str = "shapes"
    # run folder; every stage writes a subfolder; re-running resumes generation
    out: str = "runs/main"
    # the pre-trained pipeline to align
    model: str = BASE_MODEL
    # generate -> label -> tune rounds, each from the previous round's model
    rounds: int = ranged(1, 1, 8)
    # extra generations per prompt, pseudo-labelled by the reward model
    unlabelled_per_prompt: int = ranged(8, 0, 64)
    # prompts of the unlabelled generations: "seen" (the feedback prompts) | "unseen" (the
    # prompts no one labels; the reward model scores them) | "all" (both)
    unlabelled_split: str = "all"
    # comma-separated betas for a trade-off sweep (one fine-tune each, round 1 only); "" = finetune.beta
    betas: str = ""
    # seeds generation, labels, reward model, fine-tune and evaluation (each
    # stage's seed derives from it: round_configs)
    seed: int = seed_field()
    # seeds only what learns from the images: the rater's noise, the
    # reward model and the fine-tune; -1 = --seed. With --reuse: a study's repeat on
    # the same images (the rater-noise study's seeds)
    train_seed: int = ranged(-1, -1, SEED_MAX)
    # a finished run folder whose round-1 images (feedback and unlabelled, not their labels) this run
    # copies instead of drawing them again; "" = draw them. Its settings must match (generation checks).
    # Its report's evaluation of the same base at the same settings is read, not drawn again
    reuse: str = ""
    # copy the final aligned model and reward model into t2idemo/assets
    ship: bool = False

    # --- each stage's options: the stage's own config (its defaults are the main job's)
    # stage 1: the images
    generate: GenerateConfig = _stage(GenerateConfig, "generate")
    # stage 1: the simulated rater
    labels: LabelConfig = _stage(LabelConfig, "labels")
    # stage 2: the reward model
    reward: RewardConfig = _stage(RewardConfig, "reward")
    # stage 3: fine-tune
    finetune: FinetuneConfig = _stage(FinetuneConfig, "finetune")
    # the before/after evaluation
    evaluate: EvalConfig = _stage(EvalConfig, "evaluate")

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not allowed; use one of {tuple(PRESETS)}")
        if self.unlabelled_split not in ("unseen", "seen", "all"):
            raise ValueError(
                f"unlabelled_split={self.unlabelled_split!r} is not allowed; use 'unseen', 'seen' or 'all'"
            )
        if self.betas and self.rounds != 1:
            raise ValueError(f"betas={self.betas!r} sweeps one round; use rounds=1 (got {self.rounds})")
        self.beta_list()  # each beta within finetune.beta's range

    @property
    def judge(self) -> bool:
        """True where the judge can rate the images (the shapes world); at SD scale people label."""
        return self.generate.prompt_set == "shapes"

    def beta_list(self) -> list:
        """The betas of a sweep (``betas``), else [finetune.beta]; each within finetune.beta's range."""
        return comma_list(self.betas, "betas", float, *bounds(FinetuneConfig, "beta")) or [self.finetune.beta]


# Named presets: changes to RunConfig's values ("stage.field": value). "shapes" is the main job as the README quotes
# it; "shapes-long" the longer job that made the shipped aligned model; "-small" shrinks sizes only (CI executes the
# notebooks and tests at it); "sd15" is Stable Diffusion v1.5 and CLIP ViT-L/14 with LoRA on a 16 GB GPU
# (t2idemo/sd.py's plan), for the notebooks: the main job needs the judge.
PRESETS = {
    "shapes": {},
    # what made the shipped tiny-sd-aligned and tiny-reward (`run --preset shapes-long --ship`): 4x the feedback
    # labels, 16 unlabelled images per prompt, each prompt's 4 best good images above a reward floor of 0.7, and
    # 3,200 steps with the paper's pre-training term, training all but the UNet's 3x3 convolutions and timestep
    # embedding, so that git stores the tuned file as a delta of the base's. Why each, measured: docs/findings.md, A.4
    "shapes-long": {
        "generate.per_prompt": 16,
        "unlabelled_per_prompt": 16,
        "finetune.top_k": 4,
        "finetune.min_reward": 0.7,
        "finetune.train_steps": 3200,
        "finetune.beta": 1.0,
        "finetune.train": "all_but_convs_and_time",
    },
    "shapes-small": {
        "generate.max_prompts": 12,
        "unlabelled_per_prompt": 1,
        "finetune.train_steps": 6,
        "evaluate.n_combination": 16,
        "evaluate.n_single": 4,
        "reward.n_boot": 200,
        "reward.noise_levels": "0,0.3",
    },
    "sd15": {
        "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "generate.prompt_set": "sd",
        "generate.max_prompts": 100,
        "generate.sample_steps": 30,
        "generate.guidance": 7.5,
        "generate.batch": 8,
        "reward.clip": "openai/clip-vit-large-patch14",
        "reward.n_boot": 1000,
        "reward.noise_levels": "0,0.1,0.2",
        "unlabelled_per_prompt": 0,
        "finetune.weight": "reward",
        "finetune.top_k": 0,
        "finetune.min_reward": 0.0,
        "finetune.train_steps": 1000,
        "finetune.batch": 4,
        "finetune.pre_batch": 4,
        "finetune.encode_batch": 8,
        "finetune.lr": 1e-4,
        "finetune.p_uncond": 0.1,
        "finetune.pre_pool": 0,
        "finetune.lora_rank": 8,
        "finetune.mixed_precision": "fp16",
        "finetune.gradient_checkpointing": True,
        "evaluate.sample_steps": 30,
        "evaluate.guidance": 7.5,
        "evaluate.n_combination": 64,
        "evaluate.n_single": 16,
    },
}
PRESETS["sd15-small"] = {
    **PRESETS["sd15"],
    "generate.max_prompts": 8,
    "generate.sample_steps": 10,
    "reward.n_boot": 200,
    "reward.noise_levels": "0,0.2",
    "finetune.train_steps": 10,
    "evaluate.n_combination": 8,
    "evaluate.n_single": 2,
}

# Fine-tune recipes: changes to the finetune stage. "filtered" is the preset's; "paper" weights every image by
# r(x, z) as Lee et al.; "dpo" is Diffusion-DPO (each prompt's top_k good images against its worst bad ones, the
# frozen base as reference) at its own learning rate (5e-4 collapsed the model: docs/findings.md, section 3).
RECIPES = {
    "filtered": {},
    "paper": {"finetune.top_k": 0, "finetune.min_reward": 0.0, "finetune.weight": "reward"},
    "dpo": {"finetune.method": "dpo", "finetune.lr": 2e-5},
}


def preset(name: str = "shapes", recipe: str = "filtered", **changes) -> RunConfig:
    """The RunConfig of preset ``name`` with fine-tune ``recipe`` and ``changes`` on top ("stage.field" keys for a
    stage's field, e.g. ``preset("shapes", **{"finetune.lr": 3e-4})``)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed; use one of {tuple(PRESETS)}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not allowed; use one of {tuple(RECIPES)}")
    return changed(RunConfig(), **{**PRESETS[name], **RECIPES[recipe], **changes, "preset": name})


def changed(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of ``cfg`` with ``changes`` ("stage.field" keys for a stage's field); a field a round sets is refused."""
    taken = sorted(set(changes) & ROUND_SETS)
    if taken:
        raise ValueError(f"{taken[0]} is set by each round of the main job (runconfig.ROUND_SETS), not by an override")
    return build(RunConfig, changes, cfg)


# The flat fields of RunConfig before it was composed of the stage configs: results.json files written then still load
OLD_NAMES = {
    "max_prompts": "generate.max_prompts",
    "per_prompt": "generate.per_prompt",
    "feedback_guidance": "generate.guidance",
    "feedback_steps": "generate.sample_steps",
    "flip": "labels.flip",
    "skip": "labels.skip",
    "rater_bias": "labels.bias",
    "lam": "reward.lam",
    "steps": "finetune.train_steps",
    "eval_split": "evaluate.split",
    **{
        k: f"finetune.{k}"
        for k in (
            "top_k",
            "min_reward",
            "method",
            "dpo_beta",
            "balance",
            "weight",
            "beta",
            "lr",
            "p_uncond",
            "pre_batch",
            "pre_pool",
            "ema",
        )
    },
    **{k: f"evaluate.{k}" for k in ("n_combination", "n_single", "best_of")},
}


def from_saved(saved: dict) -> RunConfig:
    """The RunConfig a finished run recorded (report/results.json "run_config"), in this or the older flat layout.
    The round-set fields it recorded are dropped: a round sets them again."""
    flat = {}
    for key, value in saved.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in OLD_NAMES:
            flat[OLD_NAMES[key]] = value
        else:
            flat[key] = value
    if "recipe" in saved or "dpo_lr" in saved:  # the older layout: a DPO run trained at dpo_lr
        flat["finetune.lr"] = (
            saved["dpo_lr"] if saved.get("method") == "dpo" else saved.get("lr", flat.get("finetune.lr"))
        )
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return changed(RunConfig(), **{k: v for k, v in flat.items() if k.split(".")[0] in known and k not in ROUND_SETS})


# ----------------------------------------------------------------------------- the run folder's layout
@dataclass(frozen=True)
class RoundFolders:
    """Where one round reads and writes."""

    # stage 1: the labelled feedback images (imagefolder + labels.sqlite)
    feedback: str
    # stage 2: what the reward model trains on (every round's labels so far)
    reward_data: str
    # stage 2: the reward model (head.safetensors + reward_config.json)
    reward: str
    # stage 3: extra generations the reward model scores
    unlabelled: str
    # stage 3: the tuned pipeline (a betas sweep adds "-beta{b}")
    aligned: str


@dataclass(frozen=True)
class RunPaths:
    """The layout of a run folder (``python -m t2idemo run --out OUT``); every reader of a run folder asks it."""

    # the run folder
    out: str

    def round(self, r: int) -> RoundFolders:
        d = os.path.join(self.out, f"round{r}")
        return RoundFolders(
            feedback=os.path.join(d, "feedback"),
            reward_data=os.path.join(d, "reward_data") if r > 1 else os.path.join(d, "feedback"),
            reward=os.path.join(d, "reward"),
            unlabelled=os.path.join(d, "unlabelled"),
            aligned=os.path.join(d, "aligned"),
        )

    @property
    def report(self) -> str:
        return os.path.join(self.out, "report")  # the evaluation: report.md, results.json, figures

    @property
    def results(self) -> str:
        return os.path.join(self.report, "results.json")

    @property
    def overopt(self) -> str:
        return os.path.join(self.out, "overopt")  # `python -m t2idemo overopt`'s default output


# ----------------------------------------------------------------------------- the one derivation of a round
@dataclass(frozen=True)
class Round:
    """Every stage's config for one round."""

    # 1. the images people (here: the judge) label
    feedback: GenerateConfig
    # 2. the simulated rater
    labels: LabelConfig
    # 3. the reward model, on every round's labels so far
    reward: RewardConfig
    # 4. more generations for the reward model to score (None: none)
    unlabelled: GenerateConfig | None
    # 5. {beta: FinetuneConfig}: one fine-tune per beta (one unless --betas sweeps)
    finetune: dict


def round_configs(cfg: RunConfig, r: int, model: str, folders: RoundFolders) -> Round:
    """Round ``r`` (1, 2, ...; the app's short loop is round 0) from ``model``: each stage's config of ``cfg`` with
    the round's folders, model and seeds. Seeds: feedback seed + 10 r, unlabelled seed + 10 r + 5, labels seed + r,
    reward seed, fine-tune seed + r; ``--train-seed`` (when set) replaces ``--seed`` for labels, reward and
    fine-tune."""
    s = cfg.seed
    t = s if cfg.train_seed < 0 else cfg.train_seed  # what learns from the images
    feedback = dataclasses.replace(
        cfg.generate, out=folders.feedback, model=model, split="seen", prompts="", seed=s + 10 * r
    )
    labels = dataclasses.replace(
        cfg.labels, data=folders.feedback, store="", labeler="judge", seed=t + r, export="judge"
    )
    reward = dataclasses.replace(cfg.reward, data=folders.reward_data, run=folders.reward, seed=t)
    unlabelled = None
    if cfg.unlabelled_per_prompt:
        unlabelled = dataclasses.replace(
            cfg.generate,
            out=folders.unlabelled,
            model=model,
            split=cfg.unlabelled_split,
            prompts="",
            per_prompt=cfg.unlabelled_per_prompt,
            seed=s + 10 * r + 5,
        )
    tunes = {}
    for beta in cfg.beta_list():
        out = folders.aligned + (f"-beta{beta:g}" if cfg.betas else "")
        tunes[beta] = dataclasses.replace(
            cfg.finetune,
            data=folders.feedback,
            out=out,
            model=model,
            reward=folders.reward,
            unlabelled=unlabelled.out if unlabelled else "",
            beta=beta,
            seed=t + r,
        )
    return Round(feedback, labels, reward, unlabelled, tunes)


def eval_config(cfg: RunConfig, models: dict, paths: RunPaths) -> EvalConfig:
    """The before/after evaluation of ``models`` {name: folder} (best-of-N uses round 1's reward model)."""
    return dataclasses.replace(
        cfg.evaluate,
        models=",".join(models.values()),
        names=",".join(models),
        seed=cfg.seed,
        reward=paths.round(1).reward if cfg.evaluate.best_of else "",
        out=paths.report,
    )
