"""Stage 2, training: fit the reward model's head on good/bad labels and evaluate it on held-out prompts.

The model itself (frozen CLIP + head, ``RewardConfig``) is in ``reward``; the ``reward`` command, its tables and
the label-noise study in ``reward_cli``.

Loss, per minibatch (the paper's Eq. 1 and 2):

    L = MSE(r(x, z), y)  +  lambda * CE_pc  +  rho * mean(MLP(x, z)^2),      y = 1 for "good", 0 for "bad"

``CE_pc`` is the paper's prompt classification: for each GOOD image x with prompt z, draw N - 1 prompts
that differ from z in exactly one named attribute (count, colour, shape or scene, through
``world.make_prompt`` with z's category) and ask which of the N prompts is x's:
``CE(softmax([r(x, z), r(x, z_1), ..., r(x, z_N-1)] / T), 0)``. The paper's softmax is over the rewards
themselves, T = 1, and that is our default. Because r lies in [0, 1], the logits then differ by at most 1,
so the term never gets below log(1 + (N - 1) / e): it ranks the true prompt first without pushing the
swapped prompts' rewards to 0. T is exposed so that sharper settings can be tried.
Perturbed prompts that name a held-out (unseen) combination are never drawn, so no held-out prompt
reaches training, not even as a negative.

Defaults, and why (the measurements behind each: docs/findings.md, the reward model's sections):
- lambda = 0.5: the paper's auxiliary term, at a weight where it and the MSE are of similar size. In the shapes
  world it does not raise held-out AUC; it stays on by default because it is the paper's method and the thing to
  study; ``--lam 0`` (``run --reward.lam 0``) gives the better reward here.
- rho = 0.1: without the penalty every head variant tried fell below CLIPScore on unseen prompts (the MLP
  learns corrections that hold for the seen prompts only); with it, held-out AUC rises at every lambda.
- N = 4 (three perturbed prompts): every feedback prompt of the shapes world has at least three seen
  one-attribute swaps, so every good image gets a full set. N = 3 and N = 6 score the same within noise.
- T = 1, the paper's raw-reward softmax. A sharp T = 0.1 fits the seen prompts as well but generalises
  worse to unseen ones (held-out AUC over several seeds, on the shipped tiny CLIP). The seen-prompt validation
  split could not tell these apart, so this choice used the held-out figures; lambda and N were left at these
  a-priori values.

Training. CLIP embeddings are computed once (image embeddings per image, text embeddings per distinct
prompt string, perturbed ones included), so fitting the head takes seconds on a CPU. The validation
split is by prompt (no prompt has images on both sides); training stops early on the validation loss
and keeps the best epoch. Weights are safetensors, the config JSON; nothing is ever unpickled.

Evaluation. Accuracy (threshold 0.5; Wilson 95% CI) and ROC-AUC (Mann-Whitney; 95% CI by a paired
image-level bootstrap) of r against the judge's verdict on held-out (unseen-combination) prompts, next to
CLIPScore of the same CLIP and the same head trained with lambda = 0. Images of one prompt are correlated,
so these CIs are somewhat narrower than a prompt-level bootstrap would give.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import prompts, world
from .config import require_set
from .data import load_images, load_rows
from .reward import CONFIG_FILE, HEAD_FILE, FrozenCLIP, RewardConfig, RewardHead, RewardModel
from .stats import best_threshold, bootstrap_auc, calibration, roc_auc, wilson

CALIBRATION_STEPS = 300  # Adam steps that fit the head's cosine scale and bias before training (calibrate_cosine)
CALIBRATION_LR = 0.1  # their learning rate
MIN_IMPROVEMENT = 1e-5  # a validation loss must fall by more than this to count as a better epoch


# ----------------------------------------------------------------------------- data
def judge_labels(images: list, rows: list[dict]) -> torch.Tensor:
    """The noise-free verdict (1 good, 0 bad) of the judge for each image against its row's prompt."""
    from .judge import judge

    if not all(prompts.of_row(r).JUDGE for r in rows):
        raise ValueError(
            "the judge reads only the shapes world; rows of the SD-scale prompt set (t2idemo.sd) need "
            "people's labels: export them with labels.export_labels and use labels='metadata'"
        )
    return torch.tensor([float(judge(im, r)["good"]) for im, r in zip(images, rows)])


def metadata_labels(rows: list[dict]) -> tuple[torch.Tensor, list[int]]:
    """Labels written by labels.export_labels: "good" -> 1, "bad" -> 0; rows with None are unlabelled."""
    keep = [i for i, r in enumerate(rows) if r.get("label") in ("good", "bad")]
    return torch.tensor([float(rows[i]["label"] == "good") for i in keep]), keep


def flip_labels(y: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Flip each 0/1 label with probability p (a simulated labeler's noise), reproducibly."""
    if p == 0:
        return y.clone()
    flip = torch.rand(len(y), generator=torch.Generator().manual_seed(seed)) < p
    return torch.where(flip, 1 - y, y)


def split_by_prompt(rows: list[dict], val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, val): a seeded random ``val_frac`` of the distinct prompts goes to validation."""
    prompts = sorted({r["prompt"] for r in rows})
    if len(prompts) < 2:
        raise ValueError(f"the training data has {len(prompts)} distinct prompt(s); a split by prompt needs 2 or more")
    random.Random(seed).shuffle(prompts)
    val = set(prompts[: min(len(prompts) - 1, max(1, round(val_frac * len(prompts))))])
    return [i for i, r in enumerate(rows) if r["prompt"] not in val], [
        i for i, r in enumerate(rows) if r["prompt"] in val
    ]


@dataclass
class Embedded:
    """A dataset's CLIP embeddings, computed once; everything training and evaluation read."""

    rows: list  # the dataset's rows, in order
    img: torch.Tensor  # (N, D) unit-norm image embeddings
    texts: list  # distinct prompt strings: the rows' prompts, then their perturbations
    txt: torch.Tensor  # (T, D) unit-norm text embeddings of ``texts``
    prompt_ids: torch.Tensor  # (N,) index into ``texts`` of each row's prompt
    cands: torch.Tensor  # (N, K) indices into ``texts`` of each row's perturbations, -1 = none


def embed_dataset(clip: FrozenCLIP, images: list, rows: list[dict], perturb: bool = True) -> Embedded:
    texts = list(dict.fromkeys(r["prompt"] for r in rows))
    per_row = []
    for r in rows:  # each prompt set swaps attributes in its own vocabulary; prompts outside its grammar: no CE term
        ps = prompts.of_row(r)
        per_row.append(ps.perturbations(r) if perturb and ps.in_grammar(r) else [])
    texts += list(dict.fromkeys(p for ps in per_row for p in ps if p not in set(texts)))
    index = {p: i for i, p in enumerate(texts)}
    k = max([len(ps) for ps in per_row] + [1])
    cands = torch.full((len(rows), k), -1, dtype=torch.long)
    for i, ps in enumerate(per_row):
        cands[i, : len(ps)] = torch.tensor([index[p] for p in ps], dtype=torch.long)
    return Embedded(
        rows,
        clip.embed_images(images),
        texts,
        clip.embed_texts(texts),
        torch.tensor([index[r["prompt"]] for r in rows]),
        cands,
    )


def draw_candidates(
    emb: Embedded, idx: torch.Tensor, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows ``idx``: (B, n) text indices [true prompt, n-1 random perturbations] and a (B, n) validity
    mask (False where a prompt has fewer than n-1 perturbations)."""
    cands = emb.cands[idx]  # (B, K)
    keys = torch.rand(cands.shape, generator=gen).masked_fill(cands < 0, -1.0)  # missing ones sort last
    pick = cands.gather(1, keys.topk(min(n - 1, cands.shape[1]), dim=1).indices)  # (B, <= n-1)
    pick = F.pad(pick, (0, n - 1 - pick.shape[1]), value=-1)
    ids = torch.cat([emb.prompt_ids[idx, None], pick], dim=1)  # (B, n)
    return ids.clamp(min=0), ids >= 0


# ----------------------------------------------------------------------------- loss and training
def prompt_classification_loss(
    head: RewardHead, img: torch.Tensor, txt: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CE of picking candidate 0 (the true prompt): img (G, D), txt (G, N, D), mask (G, N) -> scalar."""
    r = head(img[:, None, :].expand_as(txt), txt)  # (G, N)
    logits = (r / temperature).masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(r), dtype=torch.long))


def reward_loss(
    cfg: RewardConfig, head: RewardHead, emb: Embedded, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, dict]:
    """MSE(r, y) + lambda * CE_pc + rho * mean(MLP^2) over the rows ``idx`` (y is indexed like emb.rows)."""
    img, yb, txt = emb.img[idx], y[idx], emb.txt[emb.prompt_ids[idx]]
    mse = F.mse_loss(head(img, txt), yb)
    penalty = head.correction(img, txt).pow(2).mean() if cfg.mlp_penalty > 0 else torch.zeros(())
    ce = torch.zeros(())
    good = idx[yb > 0.5]
    if cfg.lam > 0 and len(good):
        ids, mask = draw_candidates(emb, good, cfg.n_prompts, gen)
        ce = prompt_classification_loss(head, emb.img[good], emb.txt[ids], mask, cfg.temperature)
    return mse + cfg.lam * ce + cfg.mlp_penalty * penalty, {
        "mse": mse.item(),
        "ce": ce.item(),
        "penalty": penalty.item(),
    }


def fit_head(cfg: RewardConfig, emb: Embedded, y: torch.Tensor, progress: bool = True) -> tuple[RewardHead, dict]:
    """Train a fresh head on cached embeddings with a validation split by prompt and early stopping.
    Returns the head of the best validation epoch and a summary. Runs on one CPU thread: a head this
    small gains nothing from more, and on a busy machine extra threads made it many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_head(cfg, emb, y, progress)
    finally:
        torch.set_num_threads(threads)


def calibrate_cosine(
    head: RewardHead, emb: Embedded, y: torch.Tensor, idx: torch.Tensor, steps: int = CALIBRATION_STEPS
) -> None:
    """Fit the head's a and b alone (MLP term still zero) so that sigmoid(a * cos + b) matches the labels of
    rows ``idx`` in the MSE sense: before this, sigmoid(10 * cos) says "good" to nearly every image."""
    cos = (emb.img[idx] * emb.txt[emb.prompt_ids[idx]]).sum(-1)  # (n,)
    opt = torch.optim.Adam([head.cos_scale, head.cos_bias], lr=CALIBRATION_LR)
    for _ in range(steps):
        loss = F.mse_loss(torch.sigmoid(head.cos_scale * cos + head.cos_bias), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fit_head(cfg: RewardConfig, emb: Embedded, y: torch.Tensor, progress: bool) -> tuple[RewardHead, dict]:
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    tr, va = (torch.tensor(ix) for ix in split_by_prompt(emb.rows, cfg.val_frac, cfg.seed))
    head = RewardHead(emb.img.shape[1], cfg.hidden, cfg.dropout)
    calibrate_cosine(head, emb, y, tr)  # the head starts as a calibrated CLIPScore: the baseline to improve on
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    best, best_state, best_epoch, bad_epochs, best_parts = math.inf, copy.deepcopy(head.state_dict()), 0, 0, {}
    bar = tqdm(range(cfg.max_epochs), desc="reward head", disable=not progress)
    for epoch in bar:
        head.train()
        for b in tr[torch.randperm(len(tr), generator=gen)].split(cfg.batch):
            loss, parts = reward_loss(cfg, head, emb, y, b, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():  # the same perturbations every epoch, so the curve is comparable
            val, val_parts = reward_loss(cfg, head, emb, y, va, torch.Generator().manual_seed(cfg.seed + 2))
        if val.item() < best - MIN_IMPROVEMENT:
            best, best_state, best_epoch, bad_epochs = val.item(), copy.deepcopy(head.state_dict()), epoch, 0
            best_parts = val_parts
        else:
            bad_epochs += 1
        bar.set_postfix(train=f"{loss.item():.3f}", val=f"{val.item():.3f}", best=best_epoch)
        if bad_epochs >= cfg.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    with torch.no_grad():
        r_val = head(emb.img[va], emb.txt[emb.prompt_ids[va]])
    summary = {
        "epochs": epoch + 1,
        "best_epoch": best_epoch + 1,
        "val_loss": round(best, 4),
        **{f"val_{k}": round(v, 4) for k, v in best_parts.items()},
        "val_auc": round(roc_auc(r_val, y[va]), 4) if 0 < y[va].sum() < len(va) else None,
        "n_train": len(tr),
        "n_val": len(va),
        "head_seconds": round(time.time() - t0, 2),
    }
    return head, summary


def training_set(cfg: RewardConfig, clip: FrozenCLIP) -> tuple[Embedded, torch.Tensor]:
    """Embed the labelled rows of cfg.data once; labels from cfg.labels with cfg.noise flips applied."""
    rows = load_rows(cfg.data, "data")
    images = load_images(cfg.data, rows)
    if cfg.labels == "judge":
        y = judge_labels(images, rows)
    else:
        y, keep = metadata_labels(rows)
        if not keep:
            raise ValueError(
                f"data={cfg.data!r} has no row labelled 'good' or 'bad'; run labels.export_labels "
                f"first, or pass --labels judge"
            )
        rows, images = [rows[i] for i in keep], [images[i] for i in keep]
    return embed_dataset(clip, images, rows), flip_labels(y, cfg.noise, cfg.seed)


def train(cfg: RewardConfig, save: bool = True) -> RewardModel:
    """Embed the training set, fit the head, write RUN/head.safetensors + RUN/reward_config.json."""
    require_set(cfg)
    t0 = time.time()
    model = RewardModel(cfg)
    emb, y = training_set(cfg, model.clip)
    t_embed = time.time() - t0
    print(
        f"embedded {len(emb.rows)} images and {len(emb.texts)} prompts in {t_embed:.1f} s; "
        f"{int(y.sum())} good / {len(y) - int(y.sum())} bad"
    )
    model.head, summary = fit_head(cfg, emb, y)
    summary["embed_seconds"] = round(t_embed, 2)
    print("training:", json.dumps(summary))
    if save:
        model.save_pretrained(cfg.run, summary)
        print(f"wrote {os.path.join(cfg.run, HEAD_FILE)} and {CONFIG_FILE}")
    return model.eval()


# ----------------------------------------------------------------------------- metrics
def plot_calibration(curves: dict, path: str):
    """Reliability diagram of each {name: (scores, labels)} plus a histogram of the scores, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name, (s, y) in curves.items():
        c = calibration(s, y)
        m = c["count"] > 0
        ax.plot(c["mean_score"][m], c["frac_good"][m], "o-", label=f"{name} (ECE {c['ece']:.3f})")
        hx.hist(s, bins=20, range=(0, 1), histtype="step", label=name)
    ax.set(ylabel="fraction judged good", title="Reward calibration on held-out prompts", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    hx.set(xlabel="predicted reward r(x, z)", ylabel="images")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- evaluation
def heldout_set(cfg: RewardConfig, clip: FrozenCLIP) -> tuple[Embedded, torch.Tensor]:
    """The unseen-prompt rows of cfg.eval_data, embedded, with the judge's verdicts as the truth (people's
    labels for rows of the SD-scale prompt set, which the judge cannot read)."""
    rows = load_rows(cfg.eval_data, "eval_data")
    keep = [i for i, r in enumerate(rows) if r.get("unseen", world.is_unseen(r))]
    if not keep:
        raise ValueError(
            f"eval_data={cfg.eval_data!r} has no rows with unseen prompts; generate it from "
            f"world.all_prompts(unseen=True)"
        )
    rows = [rows[i] for i in keep]
    if not all(prompts.of_row(r).JUDGE for r in rows):  # SD scale: no judge, the truth is people's labels
        y, labelled = metadata_labels(rows)
        if not labelled:
            raise ValueError(
                f"eval_data={cfg.eval_data!r} has no unseen row labelled 'good' or 'bad'; label it and "
                f"run labels.export_labels (the judge reads only the shapes world)"
            )
        rows = [rows[i] for i in labelled]
        return embed_dataset(clip, load_images(cfg.eval_data, rows), rows, perturb=False), y
    images = load_images(cfg.eval_data, rows)
    return embed_dataset(clip, images, rows, perturb=False), judge_labels(images, rows)


def metrics(scores, truth, threshold: float | None, ci: tuple) -> dict:
    """Accuracy of ``score > threshold`` (None: no threshold, no accuracy) and ROC-AUC, with their CIs."""
    out = {"acc": None, "acc_ci": None, "auc": roc_auc(scores, truth), "auc_ci": ci}
    if threshold is not None:
        hits = int(((np.asarray(scores) > threshold) == np.asarray(truth).astype(bool)).sum())
        out.update(acc=hits / len(truth), acc_ci=wilson(hits, len(truth)))
    return out


def evaluate_reward(
    cfg: RewardConfig, model: RewardModel | None = None, baseline: bool = True, plot: bool = True
) -> dict:
    """Held-out accuracy and AUC of the reward model (``model``, or the one saved in cfg.run), CLIPScore and
    (``baseline``) a head trained like it with lambda = 0. ``cfg`` is the run's config (as ``reward eval``
    builds it: the saved one plus command-line options); its data and labels, when given, train the baseline and
    fit CLIPScore's threshold. A downloaded reward model with no training set: cfg.data = "" (AUCs only for
    CLIPScore)."""
    model = model or RewardModel.from_pretrained(cfg.run, device=cfg.device)
    test, truth = heldout_set(cfg, model.clip)
    pair = (test.img, test.txt[test.prompt_ids])
    scores = {f"reward model (lambda={model.cfg.lam:g}, N={model.cfg.n_prompts})": model.score(*pair)}
    clipscore = lambda e: (e.img * e.txt[e.prompt_ids]).sum(-1)  # noqa: E731  cosine of unit vectors
    thresholds = {"CLIPScore (cosine)": None}
    baseline = baseline and bool(cfg.data)
    if cfg.data:
        train_emb, y = training_set(cfg, model.clip)  # for the lambda = 0 head and CLIPScore's threshold
        overlap = {r["prompt"] for r in test.rows} & {r["prompt"] for r in train_emb.rows}
        if overlap:
            print(
                f"warning: {len(overlap)} held-out prompts also occur in the training data, e.g. {sorted(overlap)[:3]}"
            )
        thresholds["CLIPScore (cosine)"] = best_threshold(clipscore(train_emb), y)
    if baseline:
        head0, _ = fit_head(dataclasses.replace(cfg, lam=0.0), train_emb, y, progress=False)
        scores["head with lambda=0 (MSE only)"] = head0.eval()(*pair).detach()
    scores["CLIPScore (cosine)"] = clipscore(test)
    cis = bootstrap_auc({k: v.numpy() for k, v in scores.items()}, truth.numpy(), cfg.n_boot, cfg.seed)
    table = {k: metrics(v.numpy(), truth.numpy(), thresholds.get(k, 0.5), cis[k]) for k, v in scores.items()}
    first = next(iter(scores))
    deltas = {k: cis[(first, k)] for k in scores if k != first}
    out = {
        "n_images": len(truth),
        "n_prompts": len(set(test.texts)),
        "good_rate": float(truth.mean()),
        "table": table,
        "delta_auc_ci": deltas,
        "thresholds": thresholds,
    }
    if plot:
        path = cfg.plot or os.path.join(cfg.run, "calibration.png")
        plot_calibration(
            {k: (v.numpy(), truth.numpy()) for k, v in scores.items() if not k.startswith("CLIPScore")}, path
        )
        out["plot"] = path
    return out
