"""Rater noise end to end, over several seeds (README: Beyond the paper).

    python -m t2idemo run --out runs/main                                      # the default job, an honest rater
    python scripts/rater_noise.py runs/main --levels 0,0.1,0.2,0.3,four-for-three --seeds 0,1,2 \\
        --plot docs/figures/noise_end_to_end.png

Each level and seed is RUN's own config with `--reuse RUN --train-seed SEED --labels.flip LEVEL` (or `--labels.bias
four-for-three`) `--evaluate.split unseen --out RUN-noise-LEVEL-sSEED`: RUN's images (copied, not drawn
again), labelled by a rater who flips that share of the judge's verdicts (or passes four shapes for three), then the
reward model and the fine-tune; SEED seeds the labels' noise, the reward model and the fine-tune. Level 0 at RUN's
own seed is RUN itself. A finished run with the same config is read, not run again (about 6 min each on 2 idle cores;
the 14 runs of the default levels and seeds took 83 min).

Per level: how many feedback labels the rater gave otherwise than the honest one, unseen combinations all right
(mean over seeds, min - max, each seed), count, colour and background within them, "three" drawn as four (count and
combination prompts asking for three), and the reward model's AUC against the judge on RUN's unlabelled images of
unseen prompts (no one labelled them), each with the same spread.
"""

import argparse
import json
import os
import sys

from t2idemo.config import comma_list

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIASES = ("four-for-three",)


def level_runs(run: str, levels: list, seeds: list) -> dict:
    """{(level, seed): run folder}: RUN's config with that rater and train seed on RUN's images, run here unless a
    finished run with the same config is in RUN-noise-LEVEL-sSEED (level 0 at RUN's own seed is RUN)."""
    from t2idemo.overopt import run_config
    from t2idemo.run import run_or_read
    from t2idemo.runconfig import changed

    rc = run_config(run)
    folders = {}
    for level in levels:
        for seed in seeds:
            if level in ("0", "0.0") and seed == rc.seed:
                folders[level, seed] = run
                continue
            rater = {"labels.bias": level} if level in BIASES else {"labels.flip": float(level)}
            out = f"{run.rstrip('/')}-noise-{level}-s{seed}"
            run_or_read(changed(rc, out=out, reuse=run, train_seed=seed, **rater, **{"evaluate.split": "unseen"}))
            folders[level, seed] = out
    return folders


def held_out_auc(run: str, runs: list) -> dict:
    """{run: ROC-AUC of its round-1 reward model against the judge on RUN's unlabelled images of unseen prompts}."""
    from t2idemo.data import load_images, load_rows
    from t2idemo.judge import judge
    from t2idemo.reward import load_reward_fn
    from t2idemo.runconfig import RunPaths
    from t2idemo.stats import roc_auc

    unl = RunPaths(run).round(1).unlabelled
    rows = [r for r in load_rows(unl, "unlabelled") if r["unseen"]]
    images = load_images(unl, rows)
    truth = [float(judge(im, r)["good"]) for im, r in zip(images, rows)]
    print(f"reward AUC on {len(rows)} unlabelled images of unseen prompts ({int(sum(truth))} good)", flush=True)
    out = {}
    for folder in runs:
        fn = load_reward_fn(RunPaths(folder).round(1).reward)
        scores = []
        for i in range(0, len(images), 256):
            scores += fn(images[i : i + 256], [r["prompt"] for r in rows[i : i + 256]]).tolist()
        out[folder] = roc_auc(scores, truth)
    return out


def summary(run: str, folders: dict) -> list:
    """One dict per level: the tuned model's unseen figures (%) per seed, and the base's combinations rate."""
    from t2idemo.runconfig import RunPaths

    aucs = held_out_auc(run, sorted(set(folders.values())))
    rows = {}
    for (level, seed), folder in folders.items():
        with open(RunPaths(folder).results) as f:
            res = json.load(f)
        tuned = [m for k, m in res["models"].items() if k != "base"][-1]["rates"]["unseen"]
        base = res["models"]["base"]["rates"]["unseen"]
        row = rows.setdefault(
            level,
            {
                "level": level,
                "base": base["combination"]["all"],
                "base_three_as_four": three_as_four(base),
                "seeds": [],
            },
        )
        row["seeds"].append(
            {
                "seed": seed,
                "combos": 100 * tuned["combination"]["all"]["p"],
                "count": 100 * tuned["combination"]["count"]["p"],
                "colour": 100 * tuned["combination"]["color"]["p"],
                "background": 100 * tuned["combination"]["scene"]["p"],
                "three_as_four": three_as_four(tuned),
                "auc": aucs[folder],
                "changed": labels_changed(run, folder),
            }
        )
    return list(rows.values())


def labels_changed(run: str, folder: str) -> int:
    """How many of RUN's 968 feedback images this run's rater labelled otherwise than RUN's (the same images)."""
    from t2idemo.data import load_rows
    from t2idemo.runconfig import RunPaths

    honest = {r["file_name"]: r.get("label") for r in load_rows(RunPaths(run).round(1).feedback, "feedback")}
    return sum(
        honest.get(r["file_name"]) != r.get("label") for r in load_rows(RunPaths(folder).round(1).feedback, "feedback")
    )


def three_as_four(rates: dict) -> float:
    """% of the images whose prompt asks for three shapes (count and combination prompts together) that show four."""
    cats = [rates[c]["three_as_four"] for c in ("count", "combination") if "three_as_four" in rates.get(c, {})]
    return 100 * sum(c["k"] for c in cats) / max(1, sum(c["n"] for c in cats))


def spread(values: list, fmt: str = "{:.1f}") -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ({fmt.format(min(values))} - {fmt.format(max(values))})"


def table(rows: list) -> str:
    base = rows[0]["base"]
    lines = [
        f"Unseen prompts, tuned model; mean over seeds (min - max). The base: combinations {100 * base['p']:.1f} "
        f"[{100 * base['lo']:.1f}, {100 * base['hi']:.1f}], three drawn as four "
        f"{rows[0].get('base_three_as_four', float('nan')):.1f}.",
        "",
        "| rater | seeds | labels changed | combinations, all right | each seed | combo: count | combo: colour "
        "| combo: background | three drawn as four | reward AUC, held out |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seeds"]
        name = r["level"] if r["level"] in BIASES else f"{100 * float(r['level']):g}% flipped"
        lines.append(
            f"| {name} | {len(s)} | {spread([x.get('changed', float('nan')) for x in s], '{:.0f}')} | "
            f"{spread([x['combos'] for x in s])} | "
            + ", ".join(f"{x['combos']:.1f}" for x in s)
            + " | "
            + " | ".join(
                spread([x.get(k, float("nan")) for x in s]) for k in ("count", "colour", "background", "three_as_four")
            )
            + f" | {spread([x['auc'] for x in s], '{:.3f}')} |"
        )
    return "\n".join(lines)


def plot(rows: list, out: str):
    """Unseen combinations over the flip level: each seed a dot, the mean a line with its min - max; AUC on the
    right axis; the base's 95% CI as a band; the biased rater as a separate marker at 0%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flips = sorted((r for r in rows if r["level"] not in BIASES), key=lambda r: float(r["level"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = [100 * float(r["level"]) for r in flips]
    mean = [sum(s["combos"] for s in r["seeds"]) / len(r["seeds"]) for r in flips]
    ax.plot(x, mean, "o-", color="tab:blue", label="tuned: unseen combinations all right (mean over seeds)")
    for xi, r in zip(x, flips):
        ax.plot([xi] * len(r["seeds"]), [s["combos"] for s in r["seeds"]], ".", color="tab:blue", alpha=0.5)
    for r in rows:
        if r["level"] in BIASES:
            ax.plot(
                [0] * len(r["seeds"]),
                [s["combos"] for s in r["seeds"]],
                "x",
                color="tab:purple",
                ms=7,
                label=f"{r['level']} rater (each seed)",
            )
    base = rows[0]["base"]
    ax.axhspan(100 * base["lo"], 100 * base["hi"], color="grey", alpha=0.25, label="base model (95% CI)")
    ax.set_xlabel("simulated rater: labels flipped (%)")
    ax.set_ylabel("% all right (n = 512 per point)")
    ax2 = ax.twinx()
    ax2.plot(
        x,
        [sum(s["auc"] for s in r["seeds"]) / len(r["seeds"]) for r in flips],
        "s--",
        color="tab:red",
        label="reward AUC, held out (mean; right axis)",
    )
    ax2.set_ylabel("reward AUC on unseen prompts")
    ax2.set_ylim(0.5, 1.0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(
        h1 + h2, l1 + l2, fontsize=7, loc="lower center", ncol=2, frameon=False
    )  # below the axes: nothing hidden
    ax.set_title("Rater noise, end to end (slotted shapes world)", fontsize=9)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print("wrote", out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("run", help="a finished `python -m t2idemo run` folder (the honest rater)")
    p.add_argument(
        "--levels",
        default="0,0.1,0.2,0.3,four-for-three",
        help="comma-separated: shares of labels flipped (0 - 1) or a bias: " + ", ".join(BIASES),
    )
    p.add_argument(
        "--seeds", default="0,1,2", help="comma-separated train seeds (the labels' noise, reward, fine-tune)"
    )
    p.add_argument("--plot", default="", help="write the figure here (PNG); '' = no figure")
    args = p.parse_args(argv)
    levels = comma_list(args.levels, "--levels")
    for level in levels:
        try:
            ok = level in BIASES or 0 <= float(level) <= 1
        except ValueError:
            ok = False
        if not ok:
            p.error(f"--levels={args.levels!r}: {level!r} is neither a share in 0 - 1 nor one of {BIASES}")
    try:
        seeds = comma_list(args.seeds, "--seeds", int)
    except ValueError:
        p.error(f"--seeds={args.seeds!r} is not a comma-separated list of whole numbers")
    rows = summary(args.run, level_runs(args.run, levels, seeds))
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
