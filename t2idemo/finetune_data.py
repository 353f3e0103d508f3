"""What the fine-tune trains on: D_model (the model's own images, weighted or filtered by the reward) and D_pre.

``model_rows`` gathers every candidate image of D_model with its weight: the label (good 1, bad 0) or the reward
model's r(x, z) for labelled feedback images, r(x, z) for unlabelled generations. ``model_dataset`` then keeps the
rows the recipe asks for (``min_reward``, ``top_k``); ``dpo_dataset`` pairs a prompt's good and bad images instead
(Diffusion-DPO). ``FrozenEncoders`` (the pipeline's VAE and text tower) and ``cached_dataset`` encode them once into
``CachedLatents``; ``batch_sampler`` draws batches of its rows (uniformly, or balanced over prompt categories) and
``StepBatches`` hands them to a DataLoader that accelerate shards over processes. ``PretrainStream`` supplies D_pre:
fresh renders of the prior the base model learnt from, or an imagefolder at SD scale. ``cfg`` is a
``finetune.FinetuneConfig`` (its data, unlabelled, weight, min_reward, top_k and method fields).
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from . import world
from .data import load_images, load_rows
from .dpo import preference_pairs


def model_rows(cfg, reward_fn=None) -> tuple:
    """Every D_model candidate: (images, prompts, weights, categories), weights as lists. Skipped and unlabelled
    feedback images are dropped unless a reward model can weight them."""
    rows = load_rows(cfg.data, "data")
    images, prompts, weights, categories = [], [], [], []
    labelled = [r for r in rows if r.get("label") in ("good", "bad")]
    use = rows if cfg.weight == "reward" else labelled
    imgs = load_images(cfg.data, use)
    if cfg.weight == "reward":
        w = reward_scores(reward_fn, imgs, [r["prompt"] for r in use])
    else:
        w = [1.0 if r["label"] == "good" else 0.0 for r in use]
    images += imgs
    prompts += [r["prompt"] for r in use]
    categories += [r.get("category", "") for r in use]
    weights += list(w)
    if cfg.unlabelled:
        urows = load_rows(cfg.unlabelled, "unlabelled")
        uimgs = load_images(cfg.unlabelled, urows)
        images += uimgs
        prompts += [r["prompt"] for r in urows]
        categories += [r.get("category", "") for r in urows]
        weights += list(reward_scores(reward_fn, uimgs, [r["prompt"] for r in urows]))
    if not images:
        raise ValueError(f"data={cfg.data!r} has no usable images (weight={cfg.weight!r} needs labels good/bad)")
    return images, prompts, weights, categories


def model_dataset(cfg, reward_fn=None) -> tuple:
    """D_model: (images, prompts, weights (N,), categories), filtered by ``min_reward`` and ``top_k``."""
    images, prompts, weights, categories = model_rows(cfg, reward_fn)
    keep = select_rows(prompts, weights, cfg.min_reward, cfg.top_k)
    if not keep:
        raise ValueError(
            f"min_reward={cfg.min_reward!r} (with top_k={cfg.top_k}) keeps no D_model image: the highest "
            f"weight is {max(weights):.3f}; lower min_reward, or use 0 to keep every image"
        )
    images, prompts, categories = [images[i] for i in keep], [prompts[i] for i in keep], [categories[i] for i in keep]
    weights = [1.0] * len(keep) if cfg.top_k else [weights[i] for i in keep]
    return images, prompts, torch.tensor(weights, dtype=torch.float32), categories


def dpo_dataset(cfg, reward_fn=None) -> tuple:
    """D_model for Diffusion-DPO: (images, prompts, weights, categories, (winners (P,), losers (P,))): every candidate
    image (each encoded once) and the pairs of a prompt's good and bad ones; weights (P,) are ones, categories the
    pairs' (their winners')."""
    images, prompts, raw, categories = model_rows(cfg, reward_fn)
    pairs = preference_pairs(prompts, raw, cfg.min_reward or 0.5, cfg.top_k or 2)
    if not pairs:
        raise ValueError(
            f"method='dpo' found no prompt with both a good and a bad image in data={cfg.data!r} "
            f"(and unlabelled={cfg.unlabelled!r}); label more images, or use method='reward'"
        )
    winners, losers = torch.tensor([w for w, _ in pairs]), torch.tensor([l for _, l in pairs])  # (P,), (P,)
    return images, prompts, torch.ones(len(pairs)), [categories[w] for w, _ in pairs], (winners, losers)


def batch_sampler(categories: list, balance: str, rng: random.Random):
    """A function n -> n row indices of D_model: uniform over rows, or a category drawn uniformly
    (balance="category") or in proportion to the square root of its size ("sqrt"), then a row of it."""
    if balance == "none":
        return lambda n: [rng.randrange(len(categories)) for _ in range(n)]
    groups = {}
    for i, c in enumerate(categories):
        groups.setdefault(c, []).append(i)
    groups = [groups[c] for c in sorted(groups)]
    if balance == "category":
        return lambda n: [g[rng.randrange(len(g))] for g in (groups[rng.randrange(len(groups))] for _ in range(n))]
    share = [len(g) ** 0.5 for g in groups]  # unnormalised category weights
    return lambda n: [g[rng.randrange(len(g))] for g in rng.choices(groups, weights=share, k=n)]


class Examples(NamedTuple):
    """Encoded training examples, by name: a set of them, or one batch's rows of it."""

    latents: torch.Tensor  # (N, 4, h, w) the VAE's latents of the images
    text_emb: torch.Tensor  # (N, L, D) their captions' text-tower embeddings
    weight: torch.Tensor  # (N,) each example's weight in the loss, in [0, 1] (D_pre's: 1)


class Batch(NamedTuple):
    """One step of the reward recipe (Lee et al.): D_model's rows and, with a fixed D_pre pool, the pool's."""

    model: Examples  # (B, ...) D_model: the model's own images, weighted by the reward (or filtered)
    pre: Examples | None  # (P, ...) D_pre from the pool; None: no pool (the step renders fresh D_pre, or beta = 0)


class Pairs(NamedTuple):
    """One step of Diffusion-DPO: a batch of a prompt's preferred and rejected images."""

    winner: torch.Tensor  # (B, 4, h, w) the preferred image's latents
    loser: torch.Tensor  # (B, 4, h, w) the rejected image's latents
    text_emb: torch.Tensor  # (B, L, D) their prompt's embedding


class CachedLatents(torch.utils.data.Dataset):
    """The fine-tune's examples, encoded once (the VAE and text tower are frozen). Rows 0 .. n_model - 1 are
    D_model's (``model``), rows n_model .. n_model + n_pre - 1 the D_pre pool's (``pre``, or none); for Diffusion-DPO
    a row is one of ``pairs`` instead. A batch of rows comes back named: a ``Batch``, or ``Pairs``."""

    def __init__(self, model: Examples | None = None, pre: Examples | None = None, pairs: Pairs | None = None):
        self.model, self.pre, self.pairs = model, pre, pairs
        self.n_model = len(pairs.winner) if pairs is not None else len(model.latents)
        self.n_pre = len(pre.latents) if pre is not None else 0

    def __len__(self) -> int:
        return self.n_model + self.n_pre

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, rows: list):
        """A whole batch at once (the DataLoader asks for this when it exists): D_model's rows, then the pool's."""
        if self.pairs is not None:
            return Pairs(*(t[rows] for t in self.pairs))
        model_rows = [r for r in rows if r < self.n_model]  # StepBatches puts D_model's rows first
        pre_rows = [r - self.n_model for r in rows if r >= self.n_model]
        return Batch(
            model=Examples(*(t[model_rows] for t in self.model)),
            pre=Examples(*(t[pre_rows] for t in self.pre)) if self.pre is not None else None,
        )


class FrozenEncoders:
    """The pipeline's frozen VAE and text tower, moved to ``device``: images and captions -> (latents (B, 4, h, w),
    text embeddings (B, L, D)). ``null_emb`` (1, L, D) is the empty caption's (caption dropout)."""

    def __init__(self, pipe, device, encode_batch: int = 256):
        self.vae = pipe.vae.requires_grad_(False).to(device)
        self.text_encoder = pipe.text_encoder.requires_grad_(False).to(device)
        self.tok, self.device, self.encode_batch = pipe.tokenizer, device, encode_batch
        self.size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the UNet's input, in pixels
        with torch.no_grad():
            ids = self.tok(
                [""], padding="max_length", max_length=self.tok.model_max_length, return_tensors="pt"
            ).input_ids
            self.null_emb = self.text_encoder(ids.to(device))[0]  # (1, L, D)

    @torch.no_grad()
    def __call__(self, images, captions) -> tuple:
        x = pixels(images, self.size).to(self.device)  # (B, 3, H, W)
        lat = self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor  # (B, 4, h, w)
        ids = self.tok(
            list(captions),
            padding="max_length",
            max_length=self.tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return lat, self.text_encoder(ids)[0]  # (B, 4, h, w), (B, L, D)

    def encode_all(self, images, captions) -> tuple:
        """Every image, ``encode_batch`` at a time, gathered on the CPU: (N, 4, h, w), (N, L, D)."""
        lats, embs = [], []
        for i in range(0, len(images), self.encode_batch):
            lat, emb = self(images[i : i + self.encode_batch], captions[i : i + self.encode_batch])
            lats.append(lat.cpu())
            embs.append(emb.cpu())
        return torch.cat(lats), torch.cat(embs)


def cached_dataset(encoder: FrozenEncoders, images, prompts, weights, pairs=None, pool=None) -> CachedLatents:
    """The training rows, encoded once (the VAE and the text tower are frozen): D_model's images with their weights,
    then the D_pre ``pool`` (images, captions) at weight 1 if given; or, with ``pairs`` (Diffusion-DPO), one row per
    pair: the winner's and the loser's latents and their prompt's embedding."""
    lat, emb = encoder.encode_all(images, prompts)  # (N, 4, h, w), (N, L, D)
    if pairs is not None:
        winners, losers = pairs
        return CachedLatents(pairs=Pairs(lat[winners], lat[losers], emb[winners]))
    pre = None
    if pool is not None:
        lat_pre, emb_pre = encoder.encode_all(*pool)  # (P, 4, h, w), (P, L, D)
        pre = Examples(lat_pre, emb_pre, torch.ones(len(lat_pre)))
    return CachedLatents(model=Examples(lat, emb, weights), pre=pre)


def as_batch(batch):
    """The DataLoader's collate_fn: ``CachedLatents.__getitems__`` already returns the named batch."""
    return batch


class StepBatches(torch.utils.data.Sampler):
    """A DataLoader's batch sampler: one list of row indices per optimiser step, ``batch`` D_model rows drawn by
    ``draw`` (``batch_sampler``), then ``pre_batch`` rows of the D_pre pool (rows ``n_model`` to ``n_model + n_pre``),
    uniformly, from the same ``rng``. It yields ``steps`` batches; under ``accelerate`` pass the steps of every
    process, and ``accelerator.prepare`` gives process k the batches k, k + n, k + 2n, ... (its own share).
    ``states[j]`` is the rng's state before batch ``first + j`` was drawn (the last few): a checkpoint stores the
    one of the next step, since the DataLoader draws a batch ahead of the step that trains on it."""

    drop_last = True  # accelerate's BatchSamplerShard: never circle back to pad the last batches
    batch_size = None  # a batch is a list of indices, not a fixed size (the D_model and D_pre parts)

    def __init__(
        self,
        draw,
        batch: int,
        n_model: int,
        pre_batch: int,
        n_pre: int,
        rng: random.Random,
        steps: int,
        first: int = 0,
    ):
        self.draw, self.batch, self.n_model, self.pre_batch, self.n_pre = draw, batch, n_model, pre_batch, n_pre
        self.rng, self.steps, self.first, self.states = rng, steps, first, {}

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for j in range(self.first, self.first + self.steps):
            self.states = {k: v for k, v in self.states.items() if k > j - 8}  # the last few batches' states
            self.states[j] = self.rng.getstate()
            idx = self.draw(self.batch)  # (B,) D_model rows
            if self.n_pre:
                idx += [
                    self.n_model + self.rng.randrange(self.n_pre) for _ in range(self.pre_batch)
                ]  # (P,) D_pre rows
            yield idx


def select_rows(prompts: list, weights: list, min_reward: float = 0.0, top_k: int = 0) -> list:
    """Indices of the D_model rows kept: weight >= min_reward (when > 0), then each prompt's top_k (when > 0)."""
    keep = [i for i, w in enumerate(weights) if w >= min_reward] if min_reward else list(range(len(weights)))
    if top_k:
        sub = top_k_rows([prompts[i] for i in keep], [weights[i] for i in keep], top_k)
        keep = [keep[j] for j in sub]
    return keep


def top_k_rows(prompts: list, weights: list, k: int) -> list:
    """Indices of each prompt's k highest-weight images (ties: the earlier row), zero weights never kept.
    Keeping them at weight 1 instead of weighting every image by w matters here: with w in [0, 1] most of
    each batch carries little weight, and the beta term dominates the gradient (README, Stage 3)."""
    by_prompt = {}
    for i, (p, w) in enumerate(zip(prompts, weights)):
        if w > 0:
            by_prompt.setdefault(p, []).append(i)
    return sorted(i for rows in by_prompt.values() for i in sorted(rows, key=lambda i: -weights[i])[:k])


@torch.no_grad()
def reward_scores(reward_fn, images, prompts, batch: int = 256) -> list:
    out = []
    for i in range(0, len(images), batch):
        out += [float(s) for s in reward_fn(images[i : i + batch], prompts[i : i + batch])]
    return out


class PretrainStream:
    """D_pre: an endless stream of (images, captions). Fresh renders of the prior the base model was pre-trained
    on (``world.PRIORS[prior]``; for the LAION-like base this is the paper's LAION term), or an imagefolder."""

    def __init__(self, source: str, seed: int, prior: str = "laion"):
        self.rng = random.Random(seed)
        self.folder = None if source == "world" else source
        self.prior = world.get_prior(prior)
        if self.folder:
            self.rows = load_rows(self.folder, "pretrain_data")

    def sample(self, n: int) -> tuple:
        if self.folder is None:
            scenes = [self.prior.sample_scene(self.rng) for _ in range(n)]
            return [world.render(s) for s in scenes], [self.prior.caption(s, self.rng) for s in scenes]
        rows = [self.rows[self.rng.randrange(len(self.rows))] for _ in range(n)]
        return load_images(self.folder, rows), [r.get("prompt") or r.get("text", "") for r in rows]

    def pool(self, n: int) -> tuple:
        """A fixed D_pre of n images: n fresh renders, or n distinct rows of the folder (all of it if smaller)."""
        if self.folder is None:
            return self.sample(n)
        rows = self.rng.sample(self.rows, min(n, len(self.rows)))
        return load_images(self.folder, rows), [r.get("prompt") or r.get("text", "") for r in rows]


def pixels(images, size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) in [-1, 1], the VAE's input range."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
