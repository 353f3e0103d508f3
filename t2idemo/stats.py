"""Statistics every stage uses: Wilson intervals for rates, ROC-AUC and its bootstrap CIs, calibration, Cohen's kappa.

At the bottom of the package: it imports nothing of t2idemo, so every stage can import it.
"""

from __future__ import annotations

import math

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple:
    """Wilson score 95% interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, min(p, c - h)), min(1.0, max(p, c + h)))  # clamped: float rounding must not put p outside


def roc_auc(scores, labels) -> float:
    """ROC-AUC as the Mann-Whitney U statistic: P(score of a positive > score of a negative), ties count 1/2."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if len(s) != len(y):
        raise ValueError(f"scores and labels differ in length: {len(s)} != {len(y)}")
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]  # 1-based ranks, ties get their average
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(scores: dict, labels, n_boot: int = 2_000, seed: int = 0) -> dict:
    """Percentile 95% CIs of each method's AUC and of each pairwise difference, from the same image-level
    resamples (paired). ``scores``: {name: (N,) array}. Returns {name or (a, b): (lo, hi)}."""
    y = np.asarray(labels).astype(bool)
    names, rng = list(scores), np.random.default_rng(seed)
    draws = {n: [] for n in names}
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        for n in names:
            draws[n].append(roc_auc(np.asarray(scores[n])[i], y[i]))
    ci = {n: tuple(np.percentile(draws[n], [2.5, 97.5])) for n in names}
    for a in names:
        for b in names:
            if a != b:
                ci[(a, b)] = tuple(np.percentile(np.subtract(draws[a], draws[b]), [2.5, 97.5]))
    return ci


def best_threshold(scores, labels) -> float:
    """The threshold that maximises accuracy of ``score > t`` on a labelled set (for CLIPScore)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    u = np.unique(s)
    cuts = np.concatenate([[u[0] - 1], (u[:-1] + u[1:]) / 2, [u[-1] + 1]])
    acc = [((s > t) == y).mean() for t in cuts]
    return float(cuts[int(np.argmax(acc))])


def calibration(scores, labels, bins: int = 10) -> dict:
    """Reliability-diagram data for scores in [0, 1]: per equal-width bin, mean score, fraction good and
    count; and the expected calibration error (count-weighted mean |mean score - fraction good|)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    b = np.minimum((s * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    conf = np.bincount(b, weights=s, minlength=bins) / np.maximum(n, 1)
    acc = np.bincount(b, weights=y, minlength=bins) / np.maximum(n, 1)
    return {"count": n, "mean_score": conf, "frac_good": acc, "ece": float((n * np.abs(conf - acc)).sum() / n.sum())}


def agreement_stats(pairs: list) -> dict:
    """Percent agreement and Cohen's kappa of (label_a, label_b) pairs; kappa = (p_o - p_e) / (1 - p_e).
    Both are nan when there is nothing to compare; kappa is nan when p_e = 1 (both raters used one label)."""
    n = len(pairs)
    if n == 0:
        return {"n": 0, "percent": math.nan, "kappa": math.nan}
    p_o = sum(x == y for x, y in pairs) / n
    cats = {x for p in pairs for x in p}
    p_e = sum((sum(x == c for x, _ in pairs) / n) * (sum(y == c for _, y in pairs) / n) for c in cats)
    kappa = math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)
    return {"n": n, "percent": 100.0 * p_o, "kappa": kappa}
