"""Probes of why reward-weighted fine-tuning does not move the tiny model (docs/findings.md, section 2, finding 5).

Each probe fine-tunes the base model on one D_model for the same budget (1,000 steps, lr 3e-4, beta 1;
about 17 minutes on one CPU core) and evaluates it on the unseen prompts at guidance 5 and 2 (the default is 3):

    python scripts/stage3_probes.py renders     # oracle: fresh renders of the unseen prompts, all right, w = 1
    python scripts/stage3_probes.py reward      # the paper: unlabelled generations of every prompt, w = r(x, z)
    python scripts/stage3_probes.py top2        # each prompt's 2 highest-reward generations only, w = 1

``reward`` and ``top2`` need a finished main job (``python -m t2idemo run``: its round-1 reward model and
unlabelled images). Add ``--steps 300 --lr 1e-4`` for the main job's budget.
"""

import argparse
import json
import os
import random

from t2idemo import evaluate as ev
from t2idemo import world
from t2idemo.data import load_images, load_rows, write_rows_atomic
from t2idemo.eval_config import EvalConfig
from t2idemo.finetune import FinetuneConfig, finetune
from t2idemo.finetune_data import reward_scores, top_k_rows
from t2idemo.generate import GenerateConfig, generate_dataset
from t2idemo.judge import judge
from t2idemo.reward import load_reward_fn
from t2idemo.run import merge_folders
from t2idemo.runconfig import RunPaths


def renders_folder(out: str, per_prompt: int = 4) -> str:
    """Fresh renders of every unseen prompt, labelled good: perfect data for exactly the evaluation prompts."""
    os.makedirs(out, exist_ok=True)
    rng, rows = random.Random(7), []
    for prompt, meta in world.all_prompts(unseen=True):
        for _ in range(per_prompt):
            image, _ = world.render_prompt(meta, rng)
            name = f"{len(rows):05d}.png"
            image.save(os.path.join(out, name))
            rows.append({**meta, "file_name": name, "prompt": prompt, "label": "good"})
    write_rows_atomic(out, rows)
    return out


def unlabelled_everywhere(main: str, out: str) -> str:
    """The main job's unlabelled generations (seen prompts) plus 8 per unseen prompt, at the same guidance."""
    extra = out + "-unseen"
    generate_dataset(GenerateConfig(out=extra, split="unseen", per_prompt=8, guidance=2.0, seed=777))
    return merge_folders([RunPaths(main).round(1).unlabelled, extra], out)


def top_k_folder(src: str, reward: str, out: str, k: int = 2) -> str:
    """Rows of ``src`` that are among their prompt's k highest rewards, labelled good (the rest left out)."""
    rows = load_rows(src, "data")
    images = load_images(src, rows)
    prompts = [r["prompt"] for r in rows]
    keep = top_k_rows(
        prompts, reward_scores(load_reward_fn(reward), images, prompts), k
    )  # what finetune --top-k keeps
    right = sum(judge(images[i], rows[i])["good"] for i in keep)
    print(f"top-{k}: {len(keep)} of {len(rows)} images, {right / len(keep):.1%} right by the judge")
    os.makedirs(out, exist_ok=True)
    for i in keep:
        images[i].save(os.path.join(out, rows[i]["file_name"]))
    write_rows_atomic(out, [{**rows[i], "label": "good"} for i in keep])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("probe", choices=("renders", "reward", "top2"))
    ap.add_argument("--main", default="runs/main", help="a finished `python -m t2idemo run` folder")
    ap.add_argument("--out", default="runs/probes")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-4)
    args = ap.parse_args()
    d = os.path.join(args.out, args.probe)
    r1 = RunPaths(args.main).round(1)
    reward = r1.reward
    if args.probe == "renders":
        cfg = FinetuneConfig(data=renders_folder(d + "-data"), weight="label")
    elif args.probe == "reward":
        cfg = FinetuneConfig(
            data=r1.feedback, reward=reward, unlabelled=unlabelled_everywhere(args.main, d + "-unlabelled")
        )
    else:
        cfg = FinetuneConfig(
            data=top_k_folder(unlabelled_everywhere(args.main, d + "-unlabelled"), reward, d + "-data"), weight="label"
        )
    model = os.path.join(d, "model")
    finetune(
        FinetuneConfig(
            **{
                **cfg.__dict__,
                "out": model,
                "train_steps": args.steps,
                "lr": args.lr,
                "seed": 1,
                "checkpoint_every": 0,
            }
        )
    )
    for guidance in (5.0, 2.0):
        res = ev.evaluate(
            EvalConfig(
                models=model,
                names=f"{args.probe} (guidance {guidance:g})",
                split="unseen",
                guidance=guidance,
                fid=guidance == 5.0,
                out=os.path.join(d, f"report-g{guidance:g}"),
            )
        )
        print(ev.markdown_table(res))
    with open(os.path.join(d, "probe.json"), "w") as f:
        json.dump(vars(args), f)


if __name__ == "__main__":
    main()
