"""The rater-noise study's figures from `run` folders (README, Stage 3: rater noise end to end).

    python scripts/rater_noise.py auc runs/main runs/flip10 runs/flip20 runs/flip30 runs/biased
    python scripts/rater_noise.py plot docs/figures/noise_end_to_end.png 0:runs/main 0.1:runs/flip10 ...

auc: each run's round-1 reward model scored against the judge on the first run's unlabelled images of unseen
prompts (no one labelled them): AUC with a bootstrap 95% CI. plot: each run's unseen combinations all right
(report/results.json) and its reward AUC over the flip level, the base's CI as a band.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def held_out_auc(runs: list) -> dict:
    from t2idemo.data import load_rows
    from t2idemo.judge import judge
    from t2idemo.data import load_images
    from t2idemo.reward import load_reward_fn
    from t2idemo.runconfig import RunPaths
    from t2idemo.stats import bootstrap_auc, roc_auc

    unl = RunPaths(runs[0]).round(1).unlabelled
    rows = [r for r in load_rows(unl, "unlabelled") if r["unseen"]]
    images = load_images(unl, rows)
    truth = [float(judge(im, r)["good"]) for im, r in zip(images, rows)]
    print(f"{len(rows)} unlabelled images of unseen prompts, {int(sum(truth))} good")
    out = {}
    for run in runs:
        fn = load_reward_fn(RunPaths(run).round(1).reward)
        scores = []
        for i in range(0, len(images), 256):
            scores += fn(images[i:i + 256], [r["prompt"] for r in rows[i:i + 256]]).tolist()
        lo, hi = bootstrap_auc({"r": scores}, truth, n_boot=1000)["r"]
        out[run] = (roc_auc(scores, truth), lo, hi)
        print(f"{run}: AUC {out[run][0]:.3f} [{lo:.3f}, {hi:.3f}]")
    return out


def plot(out: str, specs: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t2idemo.runconfig import RunPaths

    runs = [spec.split(":", 1) for spec in specs]  # level:run folder
    aucs = held_out_auc([run for _, run in runs])
    pts = []
    for level, run in runs:
        with open(RunPaths(run).results) as f:
            res = json.load(f)
        tuned = [v for k, v in res["models"].items() if k != "base"][0]["rates"]["unseen"]["combination"]["all"]
        pts.append((100 * float(level), tuned, aucs[run][0], res["models"]["base"]["rates"]["unseen"]["combination"]["all"]))
    pts.sort(key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [p[0] for p in pts]
    ax.errorbar(x, [100 * p[1]["p"] for p in pts], yerr=[[100 * (p[1]["p"] - p[1]["lo"]) for p in pts],
                                                        [100 * (p[1]["hi"] - p[1]["p"]) for p in pts]],
                marker="o", capsize=3, label="tuned model: unseen combinations all right (judge)")
    base = pts[0][3]
    ax.axhspan(100 * base["lo"], 100 * base["hi"], color="grey", alpha=0.25, label="base model (95% CI)")
    ax.set_xlabel("simulated rater: labels flipped (%)")
    ax.set_ylabel("% all right (n = 512 per point)")
    ax2 = ax.twinx()
    ax2.plot(x, [p[2] for p in pts], "s--", color="tab:red", label="reward model AUC, held out (right axis)")
    ax2.set_ylabel("reward AUC on unseen prompts")
    ax2.set_ylim(0.5, 1.0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    ax.set_title("Rater noise, end to end (shapes world)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print("wrote", out)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("auc", "plot"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "auc":
        held_out_auc(sys.argv[2:])
    else:
        plot(sys.argv[2], sys.argv[3:])
