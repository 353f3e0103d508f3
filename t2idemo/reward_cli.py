"""Stage 2's command line, its tables and the label-noise study (training and evaluation: ``reward_train``).

    python -m t2idemo reward train --data data/feedback --run runs/reward       # head.safetensors + reward_config.json
    python -m t2idemo reward eval  --run runs/reward --eval-data data/heldout    # table with 95% CIs + calibration PNG
    python -m t2idemo reward eval  --run runs/reward --eval-data data/heldout --data data/feedback  # + lambda = 0
    python -m t2idemo reward study --data data/feedback --eval-data data/heldout  # held-out AUC vs label-flip noise

``eval`` reads the saved model's settings and lets any option given on the command line override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .reward import FrozenCLIP, RewardConfig, read_saved, saved_fields
from .reward_train import evaluate_reward, fit_head, flip_labels, heldout_set, metrics, train, training_set
from .stats import bootstrap_auc


def reward_table(res: dict) -> str:
    lines = [
        f"Held-out (unseen) prompts: {res['n_images']} images of {res['n_prompts']} prompts, "
        f"{res['good_rate']:.1%} judged good. 95% CIs: Wilson (accuracy), paired bootstrap (AUC).",
        "",
        "| method | held-out accuracy [95% CI] | ROC-AUC [95% CI] |",
        "| --- | --- | --- |",
    ]
    for name, m in res["table"].items():
        acc = "-" if m["acc"] is None else f"{m['acc']:.3f} [{m['acc_ci'][0]:.3f}, {m['acc_ci'][1]:.3f}]"
        lines.append(f"| {name} | {acc} | {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}] |")
    lines.append("")
    for name, (lo, hi) in res["delta_auc_ci"].items():
        lines.append(f"AUC(reward model) - AUC({name}): 95% CI [{lo:+.3f}, {hi:+.3f}]")
    t = res["thresholds"]["CLIPScore (cosine)"]
    lines.append(
        f"CLIPScore accuracy uses the threshold {t:.3f} that is best on the training labels; the heads use r > 0.5."
        if t is not None
        else "No training set given (--data): no CLIPScore threshold, no lambda = 0 baseline."
    )
    return "\n".join(lines)


def noise_study(cfg: RewardConfig) -> list[dict]:
    """Held-out AUC of the head (cfg.lam, and lambda = 0) trained on labels flipped with each noise level."""
    clip = FrozenCLIP(cfg.clip, cfg.device)
    test, truth = heldout_set(cfg, clip)
    emb, y = training_set(dataclasses.replace(cfg, noise=0.0), clip)
    pair, results = (test.img, test.txt[test.prompt_ids]), []
    for level in cfg.levels():
        y_noisy = flip_labels(y, level, cfg.seed)
        row = {"noise": level, "flipped": int((y_noisy != y).sum()), "n": len(y)}
        for key, lam in (("model", cfg.lam), ("lambda0", 0.0)):
            head, summary = fit_head(dataclasses.replace(cfg, noise=level, lam=lam), emb, y_noisy, progress=False)
            s = head(*pair).detach().numpy()
            ci = bootstrap_auc({"r": s}, truth.numpy(), cfg.n_boot, cfg.seed)["r"]
            row[key] = {**metrics(s, truth.numpy(), 0.5, ci), "head_seconds": summary["head_seconds"]}
        results.append(row)
    return results


def study_table(cfg: RewardConfig, results: list[dict]) -> str:
    lines = [
        f"| flip noise | labels flipped | AUC, lambda={cfg.lam:g} [95% CI] | accuracy, lambda={cfg.lam:g} "
        f"| AUC, lambda=0 [95% CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a, b = r["model"], r["lambda0"]
        lines.append(
            f"| {r['noise']:.0%} | {r['flipped']} / {r['n']} | {a['auc']:.3f} [{a['auc_ci'][0]:.3f}, "
            f"{a['auc_ci'][1]:.3f}] | {a['acc']:.3f} | {b['auc']:.3f} [{b['auc_ci'][0]:.3f}, {b['auc_ci'][1]:.3f}] |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
ACTIONS = ("train", "eval", "study")


def parse_args(argv=None) -> tuple[str, RewardConfig]:
    from .config import Parser, add_fields

    p = Parser(
        prog="python -m t2idemo reward",
        description="Stage 2: train and evaluate the reward model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "action",
        choices=ACTIONS,
        help="train: fit and save the head; eval: held-out table + calibration "
        "PNG for --run; study: held-out AUC vs label-flip noise",
    )
    add_fields(p, RewardConfig, suppress=True)  # eval: options not given come from the saved config
    args = vars(p.parse_args(argv))
    action = args.pop("action")
    if action == "eval":  # the saved model and training settings, with any option given on the command line on top
        args = {**saved_fields(read_saved(args.get("run", RewardConfig.run), "run")), **args}
    try:
        cfg = RewardConfig(**args)
    except ValueError as e:
        p.error(str(e))
    print("RewardConfig:", json.dumps(dataclasses.asdict(cfg), indent=2))
    for name in {"train": ("data",), "eval": ("eval_data",), "study": ("data", "eval_data")}[action]:
        if not getattr(cfg, name):
            raise ValueError(f"{name}='' : reward {action} needs --{name.replace('_', '-')} DIR (a dataset folder)")
    return action, cfg


def reward_main(argv=None):
    action, cfg = parse_args(argv)
    if action == "train":
        model = train(cfg)
        if cfg.eval_data:
            print(reward_table(evaluate_reward(cfg, model)))
    elif action == "eval":
        res = evaluate_reward(cfg)
        print(reward_table(res))
        print(f"wrote {res['plot']}")
    else:
        print(study_table(cfg, noise_study(cfg)))


if __name__ == "__main__":
    reward_main()
