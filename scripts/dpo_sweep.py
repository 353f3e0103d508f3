"""Diffusion-DPO against the filtered recipe, over DPO's learning rate (README: Beyond the paper; findings A.5).

    python -m t2idemo run --out runs/main                          # the default job (the filtered recipe)
    python scripts/dpo_sweep.py runs/main --lrs 5e-6,2e-5,1e-4,5e-4 # one DPO run per rate, then the table

Each rate is RUN's own config with `--recipe dpo --finetune.lr LR --reuse RUN --evaluate.split unseen --out
RUN-dpo-lrLR`: the same images and labels as RUN (copied, not drawn again), the reward model retrained on them at
the same seed, 400 steps of 64 good/bad pairs (about 15 min on 2 cores). A rate whose run has finished is read,
not run again. Prints one table (unseen prompts: base, RUN's tuned model, DPO per rate) and each fine-tune's seconds.
"""

import argparse
import json
import os
import sys

from t2idemo.config import comma_list

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sweep_runs(run: str, lrs: list) -> dict:
    """{label: results} for RUN and one DPO run per learning rate: RUN's config with the DPO recipe at that rate, on
    RUN's images (run here unless a finished run with the same config is in RUN-dpo-lrLR)."""
    from t2idemo.overopt import run_config
    from t2idemo.run import run_or_read
    from t2idemo.runconfig import RECIPES, RunPaths, changed

    with open(RunPaths(run).results) as f:
        results = {"filtered": json.load(f)}
    rc = run_config(run)
    for lr in lrs:
        cfg = changed(
            rc,
            out=f"{run.rstrip('/')}-dpo-lr{lr}",
            reuse=run,
            **{**RECIPES["dpo"], "finetune.lr": float(lr), "evaluate.split": "unseen"},
        )
        results[f"DPO, lr {lr}"] = run_or_read(cfg)
    return results


def table(results: dict) -> str:
    """The runs' unseen rates in one evaluate table (the base from RUN), then each fine-tune's wall time."""
    from t2idemo.evaluate import markdown_table

    first = next(iter(results.values()))
    base = first["models"]["base"]
    models = {"base": {**base, "rates": {"unseen": base["rates"]["unseen"]}}}
    for name, res in results.items():
        tuned = [m for k, m in res["models"].items() if k != "base"][-1]
        lr = f"{res['run_config']['finetune']['lr']:.0e}".replace("e-0", "e-")  # 5e-4
        models[name if name.startswith("DPO") else f"{name}, lr {lr}"] = {
            **tuned,
            "rates": {"unseen": tuned["rates"]["unseen"]},
        }
    times = [
        f"{name}: {sum(v for k, v in res['timings_s']['round1'].items() if k.startswith('finetune')):.0f} s"
        for name, res in results.items()
    ]
    return markdown_table({"models": models}) + "\nfine-tune wall time: " + "; ".join(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument(
        "run", help="a finished `python -m t2idemo run` folder (the filtered recipe, its images and labels)"
    )
    p.add_argument("--lrs", default="5e-6,2e-5,1e-4,5e-4", help="DPO learning rates, comma-separated")
    args = p.parse_args(argv)
    lrs = comma_list(args.lrs, "--lrs")
    for lr in lrs:
        try:
            float(lr)
        except ValueError:
            p.error(f"--lrs={args.lrs!r}: {lr!r} is not a number; use e.g. 5e-6,2e-5")
    print(table(sweep_runs(args.run, lrs)))


if __name__ == "__main__":
    main()
