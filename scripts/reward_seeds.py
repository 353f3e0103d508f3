"""Held-out AUC of the reward head over seeds, for a grid of lambda and rho (the seed table in docs/findings.md).

    python scripts/reward_seeds.py --data data/feedback --eval-data data/heldout
    python scripts/reward_seeds.py --data data/feedback --eval-data data/heldout --no-calibrate

CLIP embeddings are computed once; each head then trains in seconds on one CPU thread.
"""

import argparse
import dataclasses
import statistics

import torch

from t2idemo import reward, reward_train, stats
from t2idemo.config import comma_list


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--data", required=True, help="labelled training folder (seen prompts)")
    ap.add_argument("--eval-data", required=True, help="held-out folder (unseen prompts)")
    ap.add_argument("--clip", default=reward.REWARD_CLIP, help="reward backbone")
    ap.add_argument("--lams", default="0,0.1,0.5,1", help="comma-separated lambdas")
    ap.add_argument("--rhos", default="0.1,0", help="comma-separated MLP penalties")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per cell")
    ap.add_argument("--no-calibrate", action="store_true", help="start from a = 10, b = 0 instead of the fitted a, b")
    args = ap.parse_args()
    if args.no_calibrate:
        reward_train.calibrate_cosine = lambda *a, **k: None
    cfg = reward.RewardConfig(data=args.data, eval_data=args.eval_data, clip=args.clip, device="cpu")
    clip = reward.FrozenCLIP(cfg.clip, "cpu")
    emb, y = reward_train.training_set(cfg, clip)
    test, truth = reward_train.heldout_set(cfg, clip)
    cos = (test.img * test.txt[test.prompt_ids]).sum(-1)
    print(f"CLIPScore held-out AUC {stats.roc_auc(cos, truth):.3f} ({len(truth)} images)")
    for rho in comma_list(args.rhos, "--rhos", float):
        for lam in comma_list(args.lams, "--lams", float):
            aucs, accs = [], []
            for seed in range(args.seeds):
                c = dataclasses.replace(cfg, seed=seed, lam=lam, mlp_penalty=rho)
                head, _ = reward_train.fit_head(c, emb, y, progress=False)
                with torch.no_grad():
                    r = head(test.img, test.txt[test.prompt_ids])
                aucs.append(stats.roc_auc(r, truth))
                accs.append(float(((r > 0.5).float() == truth).float().mean()))
            print(
                f"rho {rho:g} lambda {lam:g}: AUC mean {statistics.mean(aucs):.3f} "
                f"({min(aucs):.3f}-{max(aucs):.3f}), accuracy {statistics.mean(accs):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
