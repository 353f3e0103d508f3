"""The main job: the paper's whole loop on the shipped base model, then the before/after evaluation.

    python -m t2idemo run                        # one round: each prompt's 2 best good images (filtered, the default)
    python -m t2idemo run --recipe paper         # the paper's soft weights: every image weighted by w = r(x, z)
    python -m t2idemo run --ship                 # the run that made the shipped aligned model and reward head
    python -m t2idemo run --rounds 2             # generate -> label -> tune, twice (round 2 starts from round 1's model)
    python -m t2idemo run --betas 0,0.5,1,2      # one fine-tune per beta: the alignment-fidelity trade-off plot
    python -m t2idemo run --finetune.lr 3e-4 --labels.flip 0.2   # any stage's option: --STAGE.FIELD (see --help)
    python -m t2idemo run --preset shapes-small  # the CI size: a few prompts and steps, about two minutes

The config is composed of the stage configs (generate, labels, reward, finetune, evaluate: each stage's @dataclass is
the single source of its options); a preset (PRESETS) and a fine-tune recipe (RECIPES) set their starting values.

Each round r (folders under OUT/round{r}/):
  1. feedback:   K images per seen prompt from the current model          -> feedback/ (imagefolder)
  2. labels:     the judge labels them (a simulated rater, optional noise) -> feedback/labels.sqlite, metadata
  3. reward:     frozen tiny CLIP + MLP head on every label so far        -> reward/
  4. unlabelled: more generations, scored by the reward model             -> unlabelled/
     (of every prompt: ``--unlabelled-split seen`` draws them only from the labelled ones)
  5. fine-tune:  reward-weighted loss + beta * pre-training loss          -> aligned/ (a diffusers pipeline)
Then evaluate base and every round's model on unseen and seen prompts (the judge, Wilson CIs, FID) -> OUT/report/.

``--ship`` copies the last aligned model and reward model into t2idemo/assets (what the app starts on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from . import evaluate as ev
from .config import build
from .evaluate import EvalConfig
from .finetune import FinetuneConfig, finetune
from .generate import ALIGNED_MODEL, BASE_MODEL, GenerateConfig, generate_dataset, load_pipeline
from .labels import LabelConfig, export_labels, simulate_labels
from .reward import REWARD_MODEL, RewardConfig
from .data import load_rows
from .reward_train import train as train_reward

# Stage fields the main job sets itself, so they get no --stage.field option: each round's folders and models, the
# seeds it derives from --seed, the judge's prompt set (the judge reads only the shapes world) and the options of the
# reward command's own eval / study (the run evaluates the tuned models with `evaluate`).
SET_BY_RUN = frozenset({
    "generate.out", "generate.model", "generate.split", "generate.prompts", "generate.prompt_set", "generate.seed",
    "labels.data", "labels.store", "labels.labeler", "labels.seed", "labels.export",
    "reward.data", "reward.run", "reward.seed", "reward.eval_data", "reward.n_boot", "reward.plot", "reward.noise_levels",
    "finetune.data", "finetune.out", "finetune.model", "finetune.reward", "finetune.unlabelled", "finetune.seed",
    "evaluate.models", "evaluate.names", "evaluate.reward", "evaluate.seed", "evaluate.out"})
SET = "(set by run)"  # what a SET_BY_RUN path holds in the stage configs below until a round fills it in


# The main job's stage values where they differ from the stage's own defaults (SET: filled in by each round).
MAIN_JOB = {
    # the feedback and unlabelled images at guidance 2 and 10 steps: tuning on samples drawn at guidance 5 bakes the
    # guidance in; 10 steps are judged right as often as 15 (docs/findings.md)
    "generate": dict(out=SET, sample_steps=10, guidance=2.0),
    "labels": dict(data=SET),
    "reward": dict(run=SET),
    # the filtered recipe (each prompt's 2 best good images at weight 1: it moves the model most) at lr 5e-4, caption
    # dropout 0.3 (keeps the unconditional branch in step, so guidance does not amplify a drift), a fixed D_pre pool
    # of 4,096 renders (a fifth faster per step): docs/findings.md
    "finetune": dict(data=SET, out=SET, reward=SET, weight="label", top_k=2, min_reward=0.5, lr=5e-4, p_uncond=0.3,
                     pre_pool=4096, checkpoint_every=0),
    "evaluate": dict(models=SET, split="unseen,seen", best_of=""),
}


@dataclass
class RunConfig:
    preset: str = "shapes"  # the named preset these values start from (PRESETS): shapes | shapes-small | sd15 | sd15-small
    out: str = "runs/main"  # run folder; every stage writes a subfolder; re-running resumes generation
    model: str = BASE_MODEL  # the pre-trained pipeline to align
    rounds: int = 1  # generate -> label -> tune rounds, each from the previous round's model; 1 - 8
    unlabelled_per_prompt: int = 8  # extra generations per prompt, pseudo-labelled by the reward model; 0 - 64
    unlabelled_split: str = "all"  # prompts of the unlabelled generations: "seen" (the feedback prompts) | "unseen" (the
    #                                 163 prompts no one labels; the reward model scores them) | "all" (both)
    betas: str = ""  # comma-separated betas for a trade-off sweep (one fine-tune each, round 1 only); "" = finetune.beta
    seed: int = 0  # seeds generation, labels, reward model, fine-tune and evaluation (each stage's seed derives from it)
    ship: bool = False  # copy the final aligned model and reward model into t2idemo/assets
    # each stage's options: the stage's own config, starting from the main job's values (MAIN_JOB)
    generate: GenerateConfig = field(default_factory=lambda: GenerateConfig(**MAIN_JOB["generate"]))  # stage 1: the images
    labels: LabelConfig = field(default_factory=lambda: LabelConfig(**MAIN_JOB["labels"]))  # stage 1: the simulated rater
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(**MAIN_JOB["reward"]))  # stage 2: the reward model
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(**MAIN_JOB["finetune"]))  # stage 3: fine-tune
    evaluate: EvalConfig = field(default_factory=lambda: EvalConfig(**MAIN_JOB["evaluate"]))  # the before/after evaluation

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not allowed; use one of {tuple(PRESETS)}")
        if not 1 <= self.rounds <= 8:
            raise ValueError(f"rounds={self.rounds!r} is out of range; use 1 to 8")
        if not 0 <= self.unlabelled_per_prompt <= 64:
            raise ValueError(f"unlabelled_per_prompt={self.unlabelled_per_prompt!r} is out of range; use 0 to 64")
        if self.unlabelled_split not in ("unseen", "seen", "all"):
            raise ValueError(f"unlabelled_split={self.unlabelled_split!r} is not allowed; use 'unseen', 'seen' or 'all'")
        if self.betas and self.rounds != 1:
            raise ValueError(f"betas={self.betas!r} sweeps one round; use rounds=1 (got {self.rounds})")
        for b in self.beta_list():
            if b < 0:
                raise ValueError(f"betas={self.betas!r}: every beta must be >= 0")

    @property
    def judge(self) -> bool:
        """True where the judge can rate the images (the shapes world); at SD scale people label."""
        return self.generate.prompt_set == "shapes"

    def beta_list(self) -> list:
        try:
            return [float(b) for b in self.betas.split(",") if b.strip()] or [self.finetune.beta]
        except ValueError:
            raise ValueError(f"betas={self.betas!r} is not a comma-separated list of numbers, e.g. '0,0.5,1,2'") from None


# Named presets: changes to RunConfig's values ("stage.field": value). "shapes" is the main job as the README quotes
# it; "-small" shrinks sizes only (CI executes the notebooks and tests at it); "sd15" is Stable Diffusion v1.5 and CLIP
# ViT-L/14 with LoRA on a 16 GB GPU (t2idemo/sd.py's plan), for the notebooks: the main job needs the judge.
PRESETS = {
    "shapes": {},
    "shapes-small": {"generate.max_prompts": 12, "unlabelled_per_prompt": 1, "finetune.train_steps": 6,
                     "evaluate.n_combination": 16, "evaluate.n_single": 4, "reward.n_boot": 200, "reward.noise_levels": "0,0.3"},
    "sd15": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "generate.prompt_set": "sd",
             "generate.max_prompts": 100, "generate.sample_steps": 30, "generate.guidance": 7.5, "generate.batch": 8,
             "reward.clip": "openai/clip-vit-large-patch14", "reward.n_boot": 1000, "reward.noise_levels": "0,0.1,0.2",
             "unlabelled_per_prompt": 0,
             "finetune.weight": "reward", "finetune.top_k": 0, "finetune.min_reward": 0.0, "finetune.train_steps": 1000,
             "finetune.batch": 4, "finetune.pre_batch": 4, "finetune.encode_batch": 8, "finetune.lr": 1e-4,
             "finetune.p_uncond": 0.1, "finetune.pre_pool": 0, "finetune.lora_rank": 8, "finetune.mixed_precision": "fp16",
             "finetune.gradient_checkpointing": True, "evaluate.sample_steps": 30, "evaluate.guidance": 7.5,
             "evaluate.n_combination": 64, "evaluate.n_single": 16},
}
PRESETS["sd15-small"] = {**PRESETS["sd15"], "generate.max_prompts": 8, "generate.sample_steps": 10, "reward.n_boot": 200,
                         "reward.noise_levels": "0,0.2", "finetune.train_steps": 10, "evaluate.n_combination": 8,
                         "evaluate.n_single": 2}

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
    stage's field, e.g. ``preset("shapes", **{"finetune.lr": 3e-4})``, or ``finetune=FinetuneConfig(...)``)."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed; use one of {tuple(PRESETS)}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not allowed; use one of {tuple(RECIPES)}")
    return build(RunConfig, {**PRESETS[name], **RECIPES[recipe], **changes, "preset": name})


# The flat fields of RunConfig before it was composed of the stage configs: results.json files written then still load
OLD_NAMES = {"max_prompts": "generate.max_prompts", "per_prompt": "generate.per_prompt", "feedback_guidance": "generate.guidance",
             "feedback_steps": "generate.sample_steps", "flip": "labels.flip", "skip": "labels.skip", "rater_bias": "labels.bias",
             "lam": "reward.lam", "steps": "finetune.train_steps", "eval_split": "evaluate.split",
             **{k: f"finetune.{k}" for k in ("top_k", "min_reward", "method", "dpo_beta", "balance", "weight", "beta", "lr",
                                             "p_uncond", "pre_batch", "pre_pool", "ema")},
             **{k: f"evaluate.{k}" for k in ("n_combination", "n_single", "best_of")}}


def from_saved(saved: dict) -> RunConfig:
    """The RunConfig a finished run recorded (report/results.json "run_config"), in this or the older flat layout."""
    flat = {}
    for key, value in saved.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key in OLD_NAMES:
            flat[OLD_NAMES[key]] = value
        else:
            flat[key] = value
    if "recipe" in saved or "dpo_lr" in saved:  # the older layout: a DPO run trained at dpo_lr
        flat["finetune.lr"] = saved["dpo_lr"] if saved.get("method") == "dpo" else saved.get("lr", flat.get("finetune.lr"))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return build(RunConfig, {k: v for k, v in flat.items() if k.split(".")[0] in known})


def changed(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of ``cfg`` with ``changes`` ("stage.field" keys for a stage's field)."""
    return build(RunConfig, changes, cfg)


def stage(name: str, t0: float):
    print(f"\n=== {name}  (t = {time.time() - t0:.0f} s)", flush=True)


def run_round(cfg: RunConfig, r: int, model: str, labelled: list, t0: float) -> tuple[str, list, dict]:
    """One round from ``model``; ``labelled``: feedback folders of earlier rounds (the reward model
    trains on all of them). Returns (the tuned models {beta: folder}, feedback folders, timings)."""
    d = os.path.join(cfg.out, f"round{r}")
    times = {}
    pipe = load_pipeline(model)

    stage(f"round {r}: 1. feedback images from {model}", t0)
    s = time.time()
    fb = os.path.join(d, "feedback")
    generate_dataset(feedback_config(cfg, r, fb, model), pipe)
    times["generate"] = time.time() - s

    lcfg = label_config(cfg, r, fb)
    stage(f"round {r}: 2. simulated labels (judge, flip={lcfg.flip}, skip={lcfg.skip}, bias={lcfg.bias or 'none'})", t0)
    s = time.time()
    print(simulate_labels(fb, labeler=lcfg.labeler, flip=lcfg.flip, skip=lcfg.skip, seed=lcfg.seed, bias=lcfg.bias))
    print(export_labels(fb, labeler=lcfg.export))
    labelled = labelled + [fb]
    times["label"] = time.time() - s

    stage(f"round {r}: 3. reward model on {len(labelled)} labelled folder(s)", t0)
    s = time.time()
    data = merge_folders(labelled, os.path.join(d, "reward_data")) if len(labelled) > 1 else fb
    rcfg = reward_config(cfg, data, os.path.join(d, "reward"))
    reward_model = train_reward(rcfg)
    times["reward"] = time.time() - s

    unl = ""
    if cfg.unlabelled_per_prompt:
        stage(f"round {r}: 4. unlabelled generations ({cfg.unlabelled_per_prompt} per prompt)", t0)
        s = time.time()
        unl = os.path.join(d, "unlabelled")
        generate_dataset(unlabelled_config(cfg, r, unl, model), pipe)
        times["unlabelled"] = time.time() - s

    tuned = {}
    for beta in cfg.beta_list():
        stage(f"round {r}: 5. fine-tune, beta = {beta:g}", t0)
        s = time.time()
        out = os.path.join(d, "aligned" if not cfg.betas else f"aligned-beta{beta:g}")
        finetune(finetune_config(cfg, data=fb, out=out, model=model, reward=rcfg.run, unlabelled=unl, beta=beta,
                                 seed=cfg.seed + r), reward_fn=reward_model)
        tuned[beta] = out
        times[f"finetune_beta{beta:g}"] = time.time() - s
    return tuned, labelled, times


# ----------------------------------------------------------------------------- each stage's config in a round
def feedback_config(cfg: RunConfig, r: int, out: str, model: str) -> GenerateConfig:
    """Round r's labelled feedback set: ``generate.per_prompt`` images of each seen prompt."""
    return dataclasses.replace(cfg.generate, out=out, model=model, split="seen", prompts="", prompt_set="shapes",
                               seed=cfg.seed + 10 * r)


def unlabelled_config(cfg: RunConfig, r: int, out: str, model: str) -> GenerateConfig:
    """Round r's unlabelled generations: ``unlabelled_per_prompt`` images of each prompt of ``unlabelled_split``."""
    return dataclasses.replace(cfg.generate, out=out, model=model, split=cfg.unlabelled_split, prompts="",
                               prompt_set="shapes", per_prompt=cfg.unlabelled_per_prompt, seed=cfg.seed + 10 * r + 5)


def label_config(cfg: RunConfig, r: int, data: str) -> LabelConfig:
    """Round r's simulated rater: the judge labels ``data`` (with ``labels.flip``, ``skip``, ``bias``), exported."""
    return dataclasses.replace(cfg.labels, data=data, store="", labeler="judge", seed=cfg.seed + r, export="judge")


def reward_config(cfg: RunConfig, data: str, run: str) -> RewardConfig:
    """The reward model trained on ``data`` (every round's labels so far), written to ``run``."""
    return dataclasses.replace(cfg.reward, data=data, run=run, seed=cfg.seed)


def finetune_config(cfg: RunConfig, data: str, out: str, model: str, reward: str, unlabelled: str, beta: float,
                    seed: int) -> FinetuneConfig:
    """The main job's fine-tune (``cfg.finetune``: its recipe, steps, lr, ...) on these folders; the app's short
    tune and the over-optimisation curve use it too."""
    return dataclasses.replace(cfg.finetune, data=data, out=out, model=model, reward=reward, unlabelled=unlabelled,
                               beta=beta, seed=seed)


def eval_config(cfg: RunConfig, models: dict) -> EvalConfig:
    """The before/after evaluation of ``models`` {name: folder} (best-of-N uses round 1's reward model)."""
    return dataclasses.replace(cfg.evaluate, models=",".join(models.values()), names=",".join(models), seed=cfg.seed,
                               reward=os.path.join(cfg.out, "round1", "reward") if cfg.evaluate.best_of else "",
                               out=os.path.join(cfg.out, "report"))


def merge_folders(folders: list, out: str) -> str:
    """One imagefolder holding the images and rows of several (file names prefixed by their round)."""
    from .data import write_rows_atomic

    os.makedirs(out, exist_ok=True)
    rows = []
    for k, folder in enumerate(folders):
        for row in load_rows(folder, "data"):
            name = f"r{k}_{row['file_name']}"
            if not os.path.exists(os.path.join(out, name)):
                shutil.copy(os.path.join(folder, row["file_name"]), os.path.join(out, name))
            rows.append({**row, "file_name": name})
    write_rows_atomic(out, rows)
    return out


def run(cfg: RunConfig) -> dict:
    if not cfg.judge:
        raise ValueError(f"preset={cfg.preset!r} (prompt_set={cfg.generate.prompt_set!r}): the main job labels with the "
                         "judge, which reads only the shapes world; at SD scale people label (notebooks 00-04)")
    t0 = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    model, labelled, models, timings = cfg.model, [], {"base": cfg.model}, {}
    for r in range(1, cfg.rounds + 1):
        tuned, labelled, timings[f"round{r}"] = run_round(cfg, r, model, labelled, t0)
        for beta, path in tuned.items():
            models[f"round {r}" if not cfg.betas else f"beta {beta:g}"] = path
        model = tuned[cfg.finetune.beta] if cfg.finetune.beta in tuned else list(tuned.values())[-1]

    stage(f"evaluate {len(models)} models on {cfg.evaluate.split} prompts", t0)
    s = time.time()
    ecfg = eval_config(cfg, models)
    results = ev.evaluate(ecfg)
    timings["evaluate"] = time.time() - s
    if cfg.betas:
        points = [{"beta": b, "results": {"models": {"base": results["models"]["base"],
                                                      f"beta {b:g}": results["models"][f"beta {b:g}"]}}}
                  for b in cfg.beta_list()]
        ev.plot_tradeoff(points, os.path.join(cfg.out, "report", "tradeoff.png"), split=ev.split_list(cfg.evaluate.split)[0])
        with open(os.path.join(cfg.out, "report", "report.md"), "a") as f:
            f.write("\n![alignment-fidelity trade-off over beta](tradeoff.png)\n")
    timings["total"] = time.time() - t0
    results["timings_s"] = {k: v if isinstance(v, float) else {a: round(b, 1) for a, b in v.items()} for k, v in timings.items()}
    results["run_config"] = dataclasses.asdict(cfg)
    with open(os.path.join(cfg.out, "report", "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    results["recipe"] = recipe_line(cfg)
    with open(os.path.join(cfg.out, "report", "report.md"), "a") as f:
        f.write(f"\n{results['recipe']}\n")
    print("\n" + ev.markdown_table(results) + "\n" + results["recipe"])
    print(f"\ntotal {timings['total']:.0f} s; report in {os.path.join(cfg.out, 'report')}")
    if cfg.ship:
        ship(model, os.path.join(cfg.out, f"round{cfg.rounds}", "reward"))
    return results


def recipe_line(cfg: RunConfig) -> str:
    """One line naming the fine-tune recipe, for the printed report."""
    f = cfg.finetune
    if f.method == "dpo":
        data = (f"Diffusion-DPO (`--recipe dpo`, beta_dpo {f.dpo_beta:g}): each prompt's {f.top_k or 2} best good "
                f"images against its worst bad ones (good: labelled good, or r(x, z) >= {f.min_reward or 0.5:g}), the "
                f"base as reference, no D_pre term")
        return f"Fine-tune recipe: {data}; {f.train_steps} steps of {f.batch} pairs at lr {f.lr:g}, {cfg.rounds} round(s)."
    if not f.top_k and not f.min_reward and f.weight == "reward":
        data = "every image weighted by the reward model's r(x, z) (the paper's recipe)"
    else:
        good = "labelled good" if f.weight == "label" else f"r >= {f.min_reward:g} when labelled too"
        kept = f"each prompt's {f.top_k} best images that are good" if f.top_k else "every good image"
        weight = "at weight 1" if f.top_k else "weighted by r (labelled: the label)"
        data = (f"filtered: {kept} ({good}; unlabelled: r(x, z) >= {f.min_reward:g}), {weight} "
                f"(`--recipe paper`: every image weighted by r)")
    return (f"Fine-tune recipe: {data}; beta {cfg.beta_list() if cfg.betas else f.beta}, {f.train_steps} steps at lr "
            f"{f.lr:g}, {cfg.rounds} round(s).")


def ship(aligned: str, reward: str):
    """Copy the aligned pipeline (without its checkpoint) and the reward model into the package assets."""
    for src, dst in ((aligned, ALIGNED_MODEL), (reward, REWARD_MODEL)):
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint", "*.png"))
        print(f"shipped {src} -> {dst}")


def parse_args(argv=None) -> RunConfig:
    """``--preset`` and ``--recipe`` choose the starting values; every other flag changes one of them."""
    import argparse

    from .config import Parser, parse_config

    prog, description = "python -m t2idemo run", __doc__.split("\n\n")[0]
    first = Parser(prog=prog, add_help=False)
    first.add_argument("--preset", default="shapes")
    first.add_argument("--recipe", default="filtered")
    chosen, _ = first.parse_known_args(argv)
    try:
        base = preset(chosen.preset, chosen.recipe)
    except ValueError as e:
        first.error(str(e))
    p = Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
               usage=f"{prog} [--preset NAME] [--recipe NAME] [--FIELD VALUE ...] [--STAGE.FIELD VALUE ...]",
               epilog="Set by each round, so not options: " + ", ".join(sorted(SET_BY_RUN)) + ".")
    p.add_argument("--recipe", default="filtered", choices=tuple(RECIPES), help="the fine-tune recipe, applied to "
                   "the preset before the --finetune.* flags: " + "; ".join(f"{k}: {v or 'the preset as it is'}"
                                                                            for k, v in RECIPES.items()))
    return parse_config(RunConfig, argv, defaults=base, skip=SET_BY_RUN, parser=p)


def run_main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    run_main()
