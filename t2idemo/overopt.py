"""Reward over-optimisation: does the truth keep rising with the proxy?

The fine-tune climbs a *learned* reward. In the paper's setting nobody can check that reward against the truth at
scale (humans are the truth). The shapes world has a judge that is right about every render, so we can follow both
through one long fine-tune: at checkpoints (0, 100, ..., 1,600 steps) score the model's own samples with

    proxy: the reward model's mean r(x, z)     (what the fine-tune optimises)
    truth: the judge's all-right rate           (what we wanted)
    FID:   against fresh renders of the prompts (what the pre-training term protects)

on seen and unseen prompts, for the paper's beta = 1 and for beta = 0 (no pre-training term). Gao et al. (2022)
found, for language models, that the proxy keeps rising while the truth turns down; here is the same question for
reward-weighted diffusion fine-tuning. Optionally the models of a multi-round run (``run --rounds N``) are scored
the same way, against the same reward model.

    python -m t2idemo run --out runs/main          # feedback, labels, reward model, unlabelled images (and round 1)
    python -m t2idemo overopt --run runs/main      # two long fine-tunes with checkpoints, scored -> runs/main/overopt
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch

from . import evaluate as ev
from .config import bounds, check_ranges, comma_list, ranged, seed_field
from .finetune import FinetuneConfig, finetune
from .generate import load_pipeline
from .judge import judge
from .runconfig import RunPaths, changed, from_saved, round_configs
from .world import CATEGORIES


@dataclass
class OveroptConfig:
    # a finished `python -m t2idemo run` folder: its round-1 labels, reward model and unlabelled
    # images are reused, with its fine-tune recipe (report/results.json)
    run: str = "runs/main"
    # output folder; "" = RUN/overopt
    out: str = ""
    # fine-tune steps at which to score the model (0 = the base); the fine-tune runs to the largest
    train_steps: str = "0,100,200,400,800,1600"
    # one fine-tune per beta (the pre-training term's weight, within finetune's beta range)
    betas: str = "1,0"
    # optional: a `run --rounds N` folder whose round models are scored too; "" = none
    rounds_run: str = ""
    # prompt splits, comma-separated: unseen | seen
    split: str = "unseen,seen"
    # combination images per checkpoint and split
    n_combination: int = ranged(256, 1, 100_000)
    # images per checkpoint, split and single-attribute category
    n_single: int = ranged(32, 1, 100_000)
    # evaluation seeds (image i starts from seed * 100_000 + i, as in evaluate)
    seed: int = seed_field()

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if not self.step_list():
            raise ValueError(f"train_steps={self.train_steps!r} lists no step; use e.g. '0,100,400'")
        if not self.beta_list():
            raise ValueError(f"betas={self.betas!r} lists no beta; use e.g. '1,0'")
        if any(sp not in ("unseen", "seen") for sp in ev.split_list(self.split)) or not ev.split_list(self.split):
            raise ValueError(f"split={self.split!r} is not allowed; use 'unseen', 'seen' or 'unseen,seen'")

    def step_list(self) -> list:
        """The steps to score, 0 (the base) up to finetune's largest train_steps."""
        return sorted(
            set(comma_list(self.train_steps, "train_steps", int, 0, bounds(FinetuneConfig, "train_steps")[1]))
        )

    def beta_list(self) -> list:
        return comma_list(self.betas, "betas", float, *bounds(FinetuneConfig, "beta"))


def run_config(run: str):
    """The RunConfig a finished run was made with (its report/results.json)."""
    path = RunPaths(run).results
    if not os.path.isfile(path):
        raise ValueError(f"run={run!r} has no report/results.json; finish `python -m t2idemo run --out {run}` first")
    with open(path) as f:
        return from_saved(json.load(f)["run_config"])


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score(pipe, reward_fn, metas: list, ecfg: ev.EvalConfig, ref_feats: dict) -> dict:
    """One model's samples at the evaluation's fixed seeds, scored three ways.
    Returns {split: {category: {"reward": mean r, "judge": Wilson rate of all-right},
    "fid": FID of its combinations}}."""
    images, _ = ev.evaluate_model(pipe, metas, ecfg)  # one image per prompt, seed i for image i
    r = reward_fn(images, [m["prompt"] for m in metas]).float()  # (N,) the proxy, in [0, 1]
    good = [bool(judge(im, m)["good"]) for im, m in zip(images, metas)]  # the truth
    out = {}
    for sp in ev.split_list(ecfg.split):
        out[sp] = {}
        for cat in CATEGORIES:
            idx = [i for i, m in enumerate(metas) if m["split"] == sp and m["category"] == cat]
            if idx:
                out[sp][cat] = {"reward": float(r[idx].mean()), "judge": ev.rate(sum(good[i] for i in idx), len(idx))}
        combo = [i for i, m in enumerate(metas) if m["split"] == sp and m["category"] == "combination"]
        out[sp]["fid"] = ev.fid(ev.clip_features([images[i] for i in combo]), ref_feats[sp])
    return out


def reference_features(metas: list, split: str, seed: int) -> dict:
    """{split: CLIP features of fresh renders of its combination prompts} (the FID's real side)."""
    return {
        sp: ev.clip_features(
            ev.renders([m for m in metas if m["split"] == sp and m["category"] == "combination"], seed)
        )
        for sp in ev.split_list(split)
    }


# ----------------------------------------------------------------------------- the experiment
def overoptimisation(cfg: OveroptConfig) -> dict:
    """Fine-tune once per beta with pipeline snapshots at ``cfg.train_steps``, score every snapshot (and the rounds'
    models), write OUT/overopt.json, OUT/overoptimisation.png and OUT/overopt.md; return the results."""
    from .reward import load_reward_fn

    rc = run_config(cfg.run)
    out = cfg.out or RunPaths(cfg.run).overopt
    os.makedirs(out, exist_ok=True)
    r1 = RunPaths(cfg.run).round(1)
    reward_dir = r1.reward
    reward_fn = load_reward_fn(reward_dir)
    steps = cfg.step_list()
    last = max(steps)

    # 1. one fine-tune per beta, to the last step, a pipeline snapshot at each earlier one
    models = {}  # name -> (beta, step, folder)
    for beta in cfg.beta_list():
        folder = os.path.join(out, f"beta{beta:g}")
        if last and not os.path.isfile(os.path.join(folder, "finetune.json")):
            # the run's round-1 fine-tune (its data, recipe and seed: its first steps are the same) at this beta
            (fc,) = round_configs(changed(rc, betas="", **{"finetune.beta": beta}), 1, rc.model, r1).finetune.values()
            fc = dataclasses.replace(
                fc, out=folder, train_steps=last, save_at=",".join(str(s) for s in steps if 0 < s < last)
            )
            finetune(fc)
        for s in steps:
            models[f"beta {beta:g}, step {s}"] = (
                beta,
                s,
                rc.model if s == 0 else folder if s == last else os.path.join(folder, f"step{s}"),
            )
    if cfg.rounds_run:
        for r in range(1, 9):
            path = RunPaths(cfg.rounds_run).round(r).aligned
            if os.path.isdir(path):
                models[f"round {r}"] = (None, r, path)

    # 2. score each model on the same prompts and seeds (step 0 is the base, once)
    ecfg = ev.EvalConfig(
        split=cfg.split, n_combination=cfg.n_combination, n_single=cfg.n_single, seed=cfg.seed, fid=True
    )
    metas = ev.eval_prompts(cfg.split, cfg.n_combination, cfg.n_single, cfg.seed)
    ref = reference_features(metas, cfg.split, cfg.seed)
    results = {"config": dataclasses.asdict(cfg), "reward": reward_dir, "points": []}
    cache_file = os.path.join(out, "scores.json")  # scores kept across re-runs with the same evaluation settings
    key = json.dumps([cfg.split, cfg.n_combination, cfg.n_single, cfg.seed, reward_dir])
    saved = {}
    if os.path.isfile(cache_file):
        with open(cache_file) as f:
            saved = json.load(f)
    cache = saved.get(key, {})
    for name, (beta, s, path) in models.items():
        if path not in cache:
            print(f"scoring {name}: {path}", flush=True)
            cache[path] = score(load_pipeline(path), reward_fn, metas, ecfg, ref)
            with open(cache_file, "w") as f:
                json.dump({**saved, key: cache}, f)
        results["points"].append({"name": name, "beta": beta, "step": s, "path": path, "scores": cache[path]})
    with open(os.path.join(out, "overopt.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(out, "overoptimisation.png"))
    with open(os.path.join(out, "overopt.md"), "w") as f:
        f.write(overopt_table(results) + "\n")
    print(overopt_table(results))
    return results


# ----------------------------------------------------------------------------- report
def overopt_table(results: dict, category: str = "combination") -> str:
    """One row per checkpoint: proxy and truth on each split's ``category`` prompts, the count prompts' truth, FID."""
    splits = list(results["points"][0]["scores"])
    head = ["model"] + [f"{sp}: {x}" for sp in splits for x in ("reward r", "judge %", "count prompts %", "FID")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in results["points"]:
        cells = [p["name"]]
        for sp in splits:
            s = p["scores"][sp]
            j, c = s[category]["judge"], s.get("count", {}).get("judge")
            cells += [
                f"{s[category]['reward']:.3f}",
                f"{100 * j['p']:.1f} [{100 * j['lo']:.1f}, {100 * j['hi']:.1f}]",
                f"{100 * c['p']:.1f}" if c else "-",
                f"{s['fid']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: str, category: str = "combination"):
    """Per split: the proxy (mean r) and the truth (judge all-right rate) on one axis against fine-tune steps, a line
    per beta (rounds as markers at 400 steps a round); a last panel: FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = results["points"]
    splits = list(pts[0]["scores"])
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(4.6 * (len(splits) + 1), 3.8))
    betas = sorted({p["beta"] for p in pts if p["beta"] is not None}, reverse=True)
    styles = ["-", "--", ":", "-."]
    round_steps = run_steps(results)
    for ax, sp in zip(axes, splits):
        for b, ls in zip(betas, styles):
            line = sorted((p for p in pts if p["beta"] == b), key=lambda p: p["step"])
            x = [p["step"] for p in line]
            ax.plot(
                x,
                [p["scores"][sp][category]["reward"] for p in line],
                ls,
                color="tab:blue",
                marker="o",
                ms=3,
                label=f"proxy: reward r, beta {b:g}",
            )
            ax.plot(
                x,
                [p["scores"][sp][category]["judge"]["p"] for p in line],
                ls,
                color="tab:orange",
                marker="o",
                ms=3,
                label=f"truth: judge, beta {b:g}",
            )
        rounds = [p for p in pts if p["beta"] is None]
        if rounds:
            x = [p["step"] * round_steps for p in rounds]
            ax.plot(
                x,
                [p["scores"][sp][category]["reward"] for p in rounds],
                "s",
                color="tab:blue",
                mfc="none",
                label="rounds: proxy",
            )
            ax.plot(
                x,
                [p["scores"][sp][category]["judge"]["p"] for p in rounds],
                "s",
                color="tab:orange",
                mfc="none",
                label="rounds: truth",
            )
        ax.set_title(f"{sp} {category} prompts")
        ax.set_xlabel("fine-tune steps")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    for b, ls in zip(betas, styles):
        line = sorted((p for p in pts if p["beta"] == b), key=lambda p: p["step"])
        for sp, c in zip(splits, ("tab:green", "tab:purple")):
            ax.plot(
                [p["step"] for p in line],
                [p["scores"][sp]["fid"] for p in line],
                ls,
                color=c,
                marker="o",
                ms=3,
                label=f"{sp}, beta {b:g}",
            )
    ax.set_title("FID (lower = closer to real renders)")
    ax.set_xlabel("fine-tune steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_steps(results: dict) -> int:
    """Fine-tune steps per round of the rounds run (for the x axis), 400 when unknown."""
    folder = results["config"].get("rounds_run")
    try:
        return run_config(folder).finetune.train_steps
    except (OSError, KeyError, TypeError, ValueError):
        return 400


def parse_args(argv=None) -> OveroptConfig:
    from .config import parse_config

    return parse_config(OveroptConfig, argv, prog="python -m t2idemo overopt", description=__doc__.split("\n\n")[0])


def overopt_main(argv=None):
    overoptimisation(parse_args(argv))


if __name__ == "__main__":
    overopt_main()
