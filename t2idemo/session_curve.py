"""What a short session buys: a simulated person through the loop's calls, at each label count.

    python -m t2idemo benchmarks session --labels 0,24,48,96,192 --flip 0.1 --seeds 0,1

For each training seed and label count n, a session as the app runs it (``t2idemo.loop`` with ``LoopConfig()``,
the app's defaults): draw n labelling images in batches of ``images_per_draw``, let a simulated person label them
(the judge, each verdict flipped with probability ``flip``: ``labels.simulate_labels``), train the reward model,
fine-tune. n = 0 is the same fine-tune with the reward model's label-free start (its CLIP alone, no labels).
Then the judge on ``eval_images`` unseen combination images per model at fixed seeds, the same prompts and seeds
for the base and every tuned model, with Wilson 95% CIs; the reward model's ROC-AUC against the judge on the
base's images of those prompts (no labelled prompt among them); and the wall time of train + tune. The unlabelled
generations depend on the seed only, so the label counts of one seed share them: the first session of a seed draws
them (its time says so), the others copy them. A session that finished writes point.json in its folder, which a
rerun of the benchmark with the same OUT reads instead of running it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time

from .evaluate import eval_prompts, rate
from .generate import image_seed, load_pipeline, sample
from .judge import judge
from .labels import simulate_labels
from .loop import LoopConfig, draw_labelling_batch, train_reward_on_labels, tune_on_labels
from .stats import roc_auc

SESSION_CURVE = os.path.join(os.path.dirname(__file__), "assets", "session_curve.png")  # the app's Train tab shows it
EVAL_SEED = 0  # the evaluation's prompts and seeds, the same for every model and training seed
LABELER = "visitor"  # the simulated person's name in the label store


def unseen_images(pipe, n: int) -> tuple[list, list, list]:
    """(images, metas, judged good) of ``n`` unseen combination prompts at fixed seeds (as ``loop.quick_eval``)."""
    metas = eval_prompts("unseen", n, 0, EVAL_SEED)
    images = sample(pipe, [m["prompt"] for m in metas], [image_seed(EVAL_SEED, i) for i in range(n)])
    return images, metas, [judge(im, m)["good"] for im, m in zip(images, metas)]


def one_session(pipe, n_labels: int, flip: float, cfg: LoopConfig, out: str, pool: str) -> dict:
    """One simulated session of ``n_labels`` labels in ``out`` -> {"reward": train_reward_on_labels' result or
    {}, "train_s", "tune_s", "model"}. ``pool``: a folder of this seed's unlabelled generations to copy (made if
    absent)."""
    folder = os.path.join(out, "labelling")
    for _ in range(-(-n_labels // cfg.images_per_draw)):  # ceil: the person draws whole batches
        draw_labelling_batch(pipe, folder, cfg, model_name="base")
    if n_labels:
        simulate_labels(folder, labeler=LABELER, flip=flip, seed=cfg.seed)
    unlabelled = os.path.join(out, "tune", "unlabelled")
    if os.path.isdir(pool) and not os.path.isdir(unlabelled):
        shutil.copytree(pool, unlabelled)  # the seed's generations, drawn by its first session
    t0 = time.perf_counter()
    reward = os.path.join(out, "reward")
    result = train_reward_on_labels(folder, reward, cfg) if n_labels else label_free_reward(reward)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = tune_on_labels(folder if n_labels else None, reward, os.path.join(out, "tune"), cfg, pipe=pipe)
    tune_s = time.perf_counter() - t0
    if not os.path.isdir(pool):
        shutil.copytree(unlabelled, pool)
    return {"reward": result, "train_s": train_s, "tune_s": tune_s, "model": model, "reward_dir": reward}


def label_free_reward(out: str) -> dict:
    """The 0-label session's reward model: the few-label reward's start, CLIP's check of each attribute alone."""
    from .reward import save_reward_model
    from .reward_attr import AttributeReward

    save_reward_model(AttributeReward(), out, {"n_labels": 0})
    return {}


def session_curve(
    labels: list, flip: float, seeds: list, eval_images: int, out: str, cfg: LoopConfig | None = None
) -> dict:
    """Every (label count, seed) session and the evaluation (module docstring) -> {"base", "points", "settings"};
    also written to OUT/session_curve.json."""
    from .reward import load_reward_fn

    cfg = cfg or LoopConfig()
    pipe = load_pipeline(cfg.model)
    images, metas, base_good = unseen_images(pipe, eval_images)
    prompts = [m["prompt"] for m in metas]
    points = []
    for seed in seeds:
        scfg = dataclasses.replace(cfg, seed=seed)
        for n in labels:
            run = os.path.join(out, f"seed{seed}", f"labels{n}")
            done = os.path.join(run, "point.json")  # a finished session: a rerun of the benchmark reads it
            if not os.path.isfile(done):
                s = one_session(pipe, n, flip, scfg, run, os.path.join(out, f"seed{seed}", "unlabelled"))
                scores = load_reward_fn(s["reward_dir"])(images, prompts).tolist()
                _, _, good = unseen_images(load_pipeline(s["model"]), eval_images)
                point = {
                    "labels": n,
                    "seed": seed,
                    "auc": roc_auc(scores, base_good),
                    "val_auc": s["reward"].get("val_auc"),
                    "yours": rate(sum(good), len(good)),
                    "train_s": round(s["train_s"], 1),
                    "tune_s": round(s["tune_s"], 1),
                }
                with open(done, "w") as f:
                    json.dump(point, f)
            with open(done) as f:
                points.append(json.load(f))
            print(point_line(points[-1]), flush=True)
    res = {
        "base": rate(sum(base_good), len(base_good)),
        "points": points,
        "settings": {"flip": flip, "eval_images": eval_images, "loop": dataclasses.asdict(cfg)},
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "session_curve.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def pct(r: dict) -> str:
    return f"{100 * r['p']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def point_line(p: dict) -> str:
    return (
        f"labels {p['labels']:>3}  seed {p['seed']}: reward AUC {p['auc']:.3f}, yours {pct(p['yours'])}, "
        f"train + tune {p['train_s'] + p['tune_s']:.0f} s"
    )


def curve_table(res: dict) -> str:
    """A markdown table: one row per label count, seeds side by side, and the gain over the base and over 0 labels."""
    base, by_n = res["base"], {}
    for p in res["points"]:
        by_n.setdefault(p["labels"], []).append(p)
    zero = statistics.mean(p["yours"]["p"] for p in by_n.get(0, [])) if 0 in by_n else None
    lines = [
        f"base: {pct(base)} of {base['n']} unseen combination images all right",
        "",
        "| labels | reward AUC (judge, unseen) | yours, per seed [Wilson 95% CI] | mean gain over base | "
        "over 0 labels | train + tune |",
        "|---|---|---|---|---|---|",
    ]
    for n, ps in sorted(by_n.items()):
        mean = statistics.mean(p["yours"]["p"] for p in ps)
        over0 = "" if zero is None or n == 0 else f"{100 * (mean - zero):+.1f}"
        aucs = ", ".join(f"{p['auc']:.3f}" for p in ps)
        yours = "; ".join(pct(p["yours"]) for p in ps)
        times = ", ".join(f"{p['train_s'] + p['tune_s']:.0f} s" for p in ps)
        lines.append(f"| {n} | {aucs} | {yours} | {100 * (mean - base['p']):+.1f} | {over0} | {times} |")
    return "\n".join(lines)


def plot_curve(res: dict, path: str) -> str:
    """Labels -> unseen combinations all right: the base's CI as a band, each seed's session with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = res["base"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = sorted({p["labels"] for p in res["points"]})
    ax.axhspan(100 * base["lo"], 100 * base["hi"], color="0.85", label="base model (95% CI)")
    ax.axhline(100 * base["p"], color="0.5", lw=1)
    seeds = sorted({p["seed"] for p in res["points"]})
    for k, seed in enumerate(seeds):
        ps = sorted((p for p in res["points"] if p["seed"] == seed), key=lambda p: p["labels"])
        x = [xs.index(p["labels"]) + 0.08 * (k - (len(seeds) - 1) / 2) for p in ps]
        y = [100 * p["yours"]["p"] for p in ps]
        err = [
            [100 * (p["yours"]["p"] - p["yours"]["lo"]) for p in ps],
            [100 * (p["yours"]["hi"] - p["yours"]["p"]) for p in ps],
        ]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=f"your model, training seed {seed}")
    ax.set_xticks(range(len(xs)), [str(n) for n in xs])
    ax.set(
        xlabel="labels you give (a person who agrees with the judge 90% of the time)",
        ylabel="unseen combinations all right (%)",
        ylim=(0, 100),
    )
    ax.set_title(f"What a short session buys ({base['n']} images a model)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
