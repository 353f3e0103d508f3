"""The main job: the paper's whole loop on the shipped base model, then the before/after evaluation.

    python -m t2idemo run                        # one round: each prompt's 2 best good images (filtered, the default)
    python -m t2idemo run --recipe paper         # the paper's soft weights: every image weighted by w = r(x, z)
    python -m t2idemo run --ship                 # the run that made the shipped aligned model and reward head
    python -m t2idemo run --rounds 2             # generate -> label -> tune, twice (round 2 starts from round 1's model)
    python -m t2idemo run --betas 0,0.5,1,2      # one fine-tune per beta: the alignment-fidelity trade-off plot

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
from dataclasses import dataclass

from . import evaluate as ev
from .finetune import FinetuneConfig, finetune
from .generate import ALIGNED_MODEL, BASE_MODEL, GenerateConfig, generate_dataset, load_pipeline
from .labels import export_labels, simulate_labels
from .reward import REWARD_MODEL, RewardConfig
from .data import load_rows
from .reward_train import train as train_reward


# What each recipe fixes (the filtered recipe uses the top_k, min_reward and weight fields as given).
RECIPES = {"filtered": {}, "paper": {"top_k": 0, "min_reward": 0.0, "weight": "reward"}}


@dataclass
class RunConfig:
    out: str = "runs/main"  # run folder; every stage writes a subfolder; re-running resumes generation
    model: str = BASE_MODEL  # the pre-trained pipeline to align
    rounds: int = 1  # generate -> label -> tune rounds, each from the previous round's model; 1 - 4
    max_prompts: int = 0  # use only the first N seen prompts (0 = all 242); small values for tests and demos
    per_prompt: int = 4  # labelled feedback images per seen prompt (242 prompts); 1 - 16
    feedback_guidance: float = 2.0  # guidance scale of the feedback and unlabelled images; 1 - 5 (see the README:
    #                                 tuning on samples drawn at guidance 5 bakes the guidance in)
    feedback_steps: int = 10  # sampler steps of the feedback and unlabelled images; 8 - 50 (10 is judged right as often
    #                           as 15 and draws 1.5x faster: docs/findings.md)
    unlabelled_per_prompt: int = 8  # extra generations per prompt, pseudo-labelled by the reward model; 0 - 16
    unlabelled_split: str = "all"  # prompts of the unlabelled generations: "seen" (the feedback prompts) | "unseen" (the
    #                                 163 prompts no one labels; the reward model scores them) | "all" (both)
    recipe: str = "filtered"  # fine-tune data: "filtered" = each prompt's top_k images that are good (labelled good, or
    #                           r >= min_reward), at weight 1 (the default: it moves the model most, docs/findings.md) | "paper" =
    #                           every image weighted by r(x, z), as Lee et al. (sets top_k 0, min_reward 0, weight "reward")
    top_k: int = 2  # filtered recipe: images kept per prompt (RAFT-like); 0 = all; 0 - 8
    min_reward: float = 0.5  # filtered recipe: an unlabelled image counts as good when r(x, z) >= this; 0 - 1
    method: str = "reward"  # fine-tune loss: "reward" (Lee et al.: reward-weighted likelihood + beta * D_pre, the recipe
    #                        above) | "dpo" (Diffusion-DPO: each prompt's top_k good images against its worst bad ones,
    #                        good = labelled good or r >= min_reward; the frozen base as reference; same UNet passes)
    dpo_beta: float = 2000.0  # fine-tune, method "dpo": Diffusion-DPO's beta; 100 - 20_000
    dpo_lr: float = 2e-5  # fine-tune, method "dpo": its learning rate (`lr` is the reward recipe's); 1e-6 - 1e-4 (5e-4
    #                       collapsed the model: docs/findings.md, section 3)
    balance: str = "none"  # fine-tune: D_model batches "none" (uniform over images) | "category" (each prompt category
    #                        equally often: the 12 count prompts get a quarter of each batch, not 3%) | "sqrt" (between)
    flip: float = 0.0  # simulated rater: probability of flipping the judge's verdict; 0 - 0.5
    skip: float = 0.0  # simulated rater: probability of skipping an image; 0 - 0.5
    rater_bias: str = ""  # simulated rater: a systematic error, "" (none) | "four-for-three" (labels.BIASES)
    lam: float = 0.5  # reward model: weight of the prompt-classification loss; 0 - 2
    beta: float = 1.0  # fine-tune: weight of the pre-training loss; 0 - 4 (1 as the paper; 0 loses count prompts: README)
    betas: str = ""  # comma-separated betas for a trade-off sweep (one fine-tune each, round 1 only); "" = just beta
    steps: int = 400  # fine-tune optimizer steps per round; 50 - 2_000 (800 made count worse: docs/findings.md)
    lr: float = 5e-4  # fine-tune learning rate; 1e-5 - 1e-3 (1e-3 drifts colours at p_uncond 0.1: docs/findings.md)
    p_uncond: float = 0.3  # fine-tune: caption dropout, as in pre-training; 0.1 - 0.5 (0.3 keeps the unconditional
    #                        branch in step at lr 1e-3, so that guidance does not amplify a drift: docs/findings.md, finding 7)
    pre_batch: int = 64  # fine-tune: D_pre (pre-training) images per step; 16 - 128 (the beta term's weight is beta alone)
    pre_pool: int = 4096  # fine-tune: 0 = fresh D_pre renders every step; n = n renders encoded once (faster); 0 - 65_536
    ema: float = 0.99  # fine-tune: EMA decay of the written weights; 0 (off) - 0.999
    weight: str = "label"  # weights of the labelled feedback images: "label" (good 1, bad 0) | "reward" (r(x, z), the paper);
    #                        unlabelled images are always weighted by the reward model
    eval_split: str = "unseen,seen"  # evaluation: prompt splits, comma-separated: unseen | seen | typical (the paper
    #                                  evaluated seen and unseen prompts; typical = what the LAION-like prior shows most)
    n_combination: int = 512  # evaluation: combination images per model and split; >= 500 for the bar
    n_single: int = 96  # evaluation: images per model, split and single-attribute category; 32 - 512
    best_of: str = ""  # evaluation: best-of-N baselines on the base model, e.g. "4,16" (costs N x sampling)
    seed: int = 0  # seeds generation, labels, reward model, fine-tune and evaluation
    ship: bool = False  # copy the final aligned model and reward model into t2idemo/assets

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r} is not allowed; use one of {tuple(RECIPES)}")
        for name, value in RECIPES[self.recipe].items():  # "paper" fixes how D_model is weighted
            setattr(self, name, value)
        if not 0 <= self.min_reward <= 1:
            raise ValueError(f"min_reward={self.min_reward!r} must be a reward in [0, 1] (0 keeps every image)")
        if not 1 <= self.rounds <= 8:
            raise ValueError(f"rounds={self.rounds!r} is out of range; use 1 to 8")
        if not 1 <= self.per_prompt <= 64:
            raise ValueError(f"per_prompt={self.per_prompt!r} is out of range; use 1 to 64")
        if not 0 <= self.unlabelled_per_prompt <= 64:
            raise ValueError(f"unlabelled_per_prompt={self.unlabelled_per_prompt!r} is out of range; use 0 to 64")
        if self.unlabelled_split not in ("unseen", "seen", "all"):
            raise ValueError(f"unlabelled_split={self.unlabelled_split!r} is not allowed; use 'unseen', 'seen' or 'all'")
        if self.betas and self.rounds != 1:
            raise ValueError(f"betas={self.betas!r} sweeps one round; use rounds=1 (got {self.rounds})")
        for b in self.beta_list():
            if b < 0:
                raise ValueError(f"betas={self.betas!r}: every beta must be >= 0")
        ev.EvalConfig(split=self.eval_split)  # a ValueError naming the split if it is unknown
        # the stage configs check the rest (flip, lam, steps, ...) when they are built

    def beta_list(self) -> list:
        try:
            return [float(b) for b in self.betas.split(",") if b.strip()] or [self.beta]
        except ValueError:
            raise ValueError(f"betas={self.betas!r} is not a comma-separated list of numbers, e.g. '0,0.5,1,2'") from None


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
    generate_dataset(GenerateConfig(out=fb, model=model, split="seen", max_prompts=cfg.max_prompts, per_prompt=cfg.per_prompt,
                                    steps=cfg.feedback_steps, guidance=cfg.feedback_guidance, seed=cfg.seed + 10 * r), pipe)
    times["generate"] = time.time() - s

    stage(f"round {r}: 2. simulated labels (judge, flip={cfg.flip}, skip={cfg.skip}, bias={cfg.rater_bias or 'none'})", t0)
    s = time.time()
    print(simulate_labels(fb, flip=cfg.flip, skip=cfg.skip, seed=cfg.seed + r, bias=cfg.rater_bias))
    print(export_labels(fb, labeler="judge"))
    labelled = labelled + [fb]
    times["label"] = time.time() - s

    stage(f"round {r}: 3. reward model on {len(labelled)} labelled folder(s)", t0)
    s = time.time()
    data = merge_folders(labelled, os.path.join(d, "reward_data")) if len(labelled) > 1 else fb
    rcfg = RewardConfig(data=data, run=os.path.join(d, "reward"), lam=cfg.lam, seed=cfg.seed)
    reward_model = train_reward(rcfg)
    times["reward"] = time.time() - s

    unl = ""
    if cfg.unlabelled_per_prompt:
        stage(f"round {r}: 4. unlabelled generations ({cfg.unlabelled_per_prompt} per prompt)", t0)
        s = time.time()
        unl = os.path.join(d, "unlabelled")
        generate_dataset(GenerateConfig(out=unl, model=model, split=cfg.unlabelled_split, max_prompts=cfg.max_prompts,
                                        per_prompt=cfg.unlabelled_per_prompt, steps=cfg.feedback_steps, guidance=cfg.feedback_guidance,
                                        seed=cfg.seed + 10 * r + 5), pipe)
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


def finetune_config(cfg: RunConfig, data: str, out: str, model: str, reward: str, unlabelled: str, beta: float,
                    seed: int) -> FinetuneConfig:
    """The main job's fine-tune (its recipe, steps, lr, ...) on these folders; the app's short tune uses it too."""
    return FinetuneConfig(data=data, out=out, model=model, reward=reward, weight=cfg.weight, unlabelled=unlabelled,
                          beta=beta, steps=cfg.steps, lr=cfg.dpo_lr if cfg.method == "dpo" else cfg.lr, p_uncond=cfg.p_uncond, pre_batch=cfg.pre_batch,
                          pre_pool=cfg.pre_pool, ema=cfg.ema, top_k=cfg.top_k, min_reward=cfg.min_reward,
                          balance=cfg.balance, method=cfg.method, dpo_beta=cfg.dpo_beta, seed=seed, checkpoint_every=0)


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
    t0 = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    model, labelled, models, timings = cfg.model, [], {"base": cfg.model}, {}
    for r in range(1, cfg.rounds + 1):
        tuned, labelled, timings[f"round{r}"] = run_round(cfg, r, model, labelled, t0)
        for beta, path in tuned.items():
            models[f"round {r}" if not cfg.betas else f"beta {beta:g}"] = path
        model = tuned[cfg.beta] if cfg.beta in tuned else list(tuned.values())[-1]

    stage(f"evaluate {len(models)} models on {cfg.eval_split} prompts", t0)
    s = time.time()
    ecfg = ev.EvalConfig(models=",".join(models.values()), names=",".join(models), split=cfg.eval_split,
                         n_combination=cfg.n_combination, n_single=cfg.n_single, seed=cfg.seed,
                         reward=os.path.join(cfg.out, "round1", "reward") if cfg.best_of else "",
                         best_of=cfg.best_of, out=os.path.join(cfg.out, "report"))
    results = ev.evaluate(ecfg)
    timings["evaluate"] = time.time() - s
    if cfg.betas:
        points = [{"beta": b, "results": {"models": {"base": results["models"]["base"],
                                                      f"beta {b:g}": results["models"][f"beta {b:g}"]}}}
                  for b in cfg.beta_list()]
        ev.plot_tradeoff(points, os.path.join(cfg.out, "report", "tradeoff.png"), split=ev.split_list(cfg.eval_split)[0])
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
    if cfg.method == "dpo":
        data = (f"Diffusion-DPO (`--method dpo`, beta_dpo {cfg.dpo_beta:g}): each prompt's {cfg.top_k or 2} best good "
                f"images against its worst bad ones (good: labelled good, or r(x, z) >= {cfg.min_reward or 0.5:g}), the "
                f"base as reference, no D_pre term")
        return f"Fine-tune recipe: {data}; {cfg.steps} steps of {FinetuneConfig.batch} pairs at lr {cfg.dpo_lr:g}, {cfg.rounds} round(s)."
    if cfg.recipe == "paper":
        data = "every image weighted by the reward model's r(x, z) (the paper's recipe)"
    else:
        good = "labelled good" if cfg.weight == "label" else f"r >= {cfg.min_reward:g} when labelled too"
        kept = f"each prompt's {cfg.top_k} best images that are good" if cfg.top_k else "every good image"
        weight = "at weight 1" if cfg.top_k else "weighted by r (labelled: the label)"
        data = (f"filtered: {kept} ({good}; unlabelled: r(x, z) >= {cfg.min_reward:g}), {weight} "
                f"(`--recipe paper`: every image weighted by r)")
    return (f"Fine-tune recipe: {data}; beta {cfg.beta_list() if cfg.betas else cfg.beta}, {cfg.steps} steps at lr "
            f"{cfg.lr:g}, {cfg.rounds} round(s).")


def ship(aligned: str, reward: str):
    """Copy the aligned pipeline (without its checkpoint) and the reward model into the package assets."""
    for src, dst in ((aligned, ALIGNED_MODEL), (reward, REWARD_MODEL)):
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint", "*.png"))
        print(f"shipped {src} -> {dst}")


def parse_args(argv=None) -> RunConfig:
    from .config import parse_config

    return parse_config(RunConfig, argv, prog="python -m t2idemo run", description=__doc__.split("\n\n")[0])


def run_main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    run_main()
