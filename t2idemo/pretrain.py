"""Pre-train the tiny Stable Diffusion stack on the shapes world, piece by piece, as SD was built.

    python -m t2idemo pretrain --part all                 # tokenizer, CLIP, VAE, UNet -> t2idemo/assets
    python -m t2idemo pretrain --part vae --vae-steps 20  # one piece, a few steps (the tests do this)

Pieces, in order (each reads the ones before it from ``--out``):
1. tokenizer: ``build_tokenizer``, a CLIP BPE tokenizer whose vocabulary is the world's words (one token each).
2. clip: a tiny ``transformers.CLIPModel`` trained contrastively on renders and captions. Its text tower
   is the pipeline's text encoder; the whole model is the reward model's backbone (stage 2).
3. vae: a tiny ``AutoencoderKL``, 32x32x3 <-> 8x8x4 latents (SD: 512x512x3 <-> 64x64x4).
4. unet: a ``UNet2DConditionModel`` trained on the VAE's latents, conditioned on the frozen text tower.

The first two live here; the VAE, the UNet and their zero-terminal-SNR noise schedule in
``t2idemo.pretrain_diffusion``. Weights are written as safetensors; the small text models in float32.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .clip import CLIP_MEAN, CLIP_STD  # OpenAI CLIP's normalisation, kept for parity
from .config import check_ranges, ranged
from .pretrain_diffusion import (
    CHUNK,
    cosine_lr,
    render_dataset,
    save_pipeline,
    text_tower,
    to_tensor,
    train_unet,
    train_vae,
)

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
CLIP_WEIGHT_DECAY = 0.05  # AdamW weight decay of the CLIP
P_CAPTION_ATTRIBUTE = 0.8  # probability that a CLIP caption states the colour, and (apart) the scene


@dataclass
class PretrainConfig:
    # folder that receives tiny-clip/, tiny-sd/ and tiny-reward-clip/
    out: str = ASSETS
    # which piece to train: tokenizer | clip | vae | unet | reward_clip | all
    part: str = "all"
    # seeds the renders, the captions and the initial weights
    seed: int = ranged(0, 0, 2_147_483_647)
    # renders in the training set (about 15 s per 60k)
    n_images: int = ranged(60_000, 1, 10_000_000)

    # --- CLIP (contrastive, multi-positive: a caption matches every image that has what it states)
    # optimizer steps
    clip_steps: int = ranged(1_200, 1, 1_000_000)
    # image-caption pairs per step
    clip_batch: int = ranged(256, 1, 65_536)
    # AdamW peak learning rate, cosine decay
    clip_lr: float = ranged(1e-3, 1e-08, 1.0)
    # probability that a CLIP caption states the count
    clip_p_count: float = ranged(0.5, 0.0, 1.0)

    # --- reward CLIP: the same recipe, a separate model for the reward (as the paper's reward uses its own CLIP)
    # optimizer steps
    rclip_steps: int = ranged(2_000, 1, 1_000_000)
    # probability that a caption states the count
    rclip_p_count: float = ranged(0.8, 0.0, 1.0)
    # fraction of renders passed through the VAE (encode, sample, decode)
    rclip_p_decoded: float = ranged(0.5, 0.0, 1.0)

    # --- VAE (reconstruction MSE + a small KL term)
    # optimizer steps
    vae_steps: int = ranged(1_200, 1, 1_000_000)
    # images per step
    vae_batch: int = ranged(32, 1, 65_536)
    # AdamW peak learning rate
    vae_lr: float = ranged(1e-3, 1e-08, 1.0)
    # weight of the per-element KL term
    vae_kl: float = ranged(1e-3, 0.0, 1.0)
    # then the decoder alone, on the posterior means (as Stability's ft-MSE decoder for
    # SD): small squares stop decoding as circles
    vae_decoder_steps: int = ranged(1_000, 0, 1_000_000)

    # --- UNet (v-prediction on zero-terminal-SNR noise)
    # optimizer steps
    unet_steps: int = ranged(2_500, 1, 1_000_000)
    # latents per step
    unet_batch: int = ranged(128, 1, 65_536)
    # AdamW peak learning rate, cosine decay
    unet_lr: float = ranged(6e-4, 1e-08, 1.0)
    # EMA decay of the saved weights
    unet_ema: float = ranged(0.999, 0.0, 0.99999)
    # probability of an empty caption (for classifier-free guidance)
    p_uncond: float = ranged(0.1, 0.0, 0.99)
    # what the UNet learns from (world.PRIORS): "laion" (typical colours and scenes, mostly one
    # shape, count seldom and scene often unstated: the shipped base) | "balanced" (every pair and
    # count, every attribute often stated: the reference) | "uniform" (every pair, counts rarely
    # stated: the first base, until commit 04a6051)
    prior: str = "laion"

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        parts = ("tokenizer", "clip", "vae", "unet", "reward_clip", "all")
        if self.part not in parts:
            raise ValueError(f"part={self.part!r} is not one of {parts}")
        world.get_prior(self.prior)  # a ValueError naming the prior if it is unknown


# ----------------------------------------------------------------------------- 1. tokenizer: the world's words
TOKEN_LENGTH = 10  # tokens per prompt, BOS and EOS included; the longest prompt needs 7


def build_tokenizer():
    """A CLIP BPE tokenizer over the world's words: letters, then merges that spell each word
    left to right, so every word of the vocabulary is a single token."""
    from transformers import CLIPTokenizer

    words = ["a", "an", "on"] + list(world.COUNT_WORDS.values()) + list(world.COLORS) + list(world.SCENES)
    words += list(world.SHAPES) + [world.plural(s) for s in world.SHAPES]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for c in letters:
        vocab[c] = len(vocab)
    for c in letters:
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for w in sorted(set(words), key=len, reverse=True):
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for p in pieces[1:]:
            if (cur, p) not in merges:
                merges.append((cur, p))
            cur += p
            vocab.setdefault(cur, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TOKEN_LENGTH)
    for w in words:  # guard: each word must be exactly one token
        assert len(tok(w)["input_ids"]) == 3, w
    return tok


def save_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# ----------------------------------------------------------------------------- 2. CLIP
def clip_config(vocab_size: int):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=TOKEN_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        image_size=world.IMAGE_SIZE,
        patch_size=4,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> CLIP pixel_values (N, 3, 32, 32), normalised as OpenAI CLIP does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def scene_codes(scenes) -> torch.Tensor:
    """(N, 4) integer codes of count, colour, shape and scene, for vectorised caption matching."""
    return torch.tensor(
        [
            [
                sc.count,
                list(world.COLORS).index(sc.color),
                world.SHAPES.index(sc.shape),
                list(world.SCENES).index(sc.scene),
            ]
            for sc in scenes
        ]
    )


def caption_match(stated: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, B) float: does image i have everything caption j states? ``stated`` is (B, 4) like
    ``scene_codes`` with -1 for "not stated" and count 0 for "more than one" (a bare plural)."""
    s, c = stated[None, :, :], codes[:, None, :]  # (1, B, 4), (B, 1, 4)
    ok = (s == c) | (s == -1)
    ok[..., 0] |= (s[..., 0] == 0) & (c[..., 0] > 1)
    return ok.all(-1).float()


def train_clip(cfg: PretrainConfig, tok, images, scenes):
    from transformers import CLIPModel

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + 1)
    model = CLIPModel(clip_config(len(tok.get_vocab())))
    codes = scene_codes(scenes)  # (N, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=CLIP_WEIGHT_DECAY)
    bar = tqdm(range(cfg.clip_steps), desc="clip")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.clip_lr * cosine_lr(step, cfg.clip_steps)
        idx = rng.sample(range(len(scenes)), cfg.clip_batch)
        caps, stated = [], codes[idx].clone()  # (B, 4)
        for k, i in enumerate(idx):  # a random caption per image; remember what it states
            sc = scenes[i]
            say_count = rng.random() < cfg.clip_p_count
            color = sc.color if rng.random() < P_CAPTION_ATTRIBUTE else None
            scene = sc.scene if rng.random() < P_CAPTION_ATTRIBUTE else None
            caps.append(world.caption(sc.count, color, sc.shape, scene, state_count=say_count))
            if not say_count and sc.count > 1:
                stated[k, 0] = 0  # a bare plural ("circles") states "more than one"; "a circle" states one
            if color is None:
                stated[k, 1] = -1
            if scene is None:
                stated[k, 3] = -1
        # multi-positive targets: caption j matches image i if image i has everything caption j states
        match = caption_match(stated, codes[idx])  # (B, B)
        ids = tok(caps, padding="max_length", max_length=TOKEN_LENGTH, return_tensors="pt")["input_ids"]  # (B, L)
        out = model(input_ids=ids, pixel_values=clip_pixels(images[idx]))
        logits = out.logits_per_image  # (B, B) image i vs caption j, times the learned temperature
        loss_i = -(F.log_softmax(logits, dim=1) * match / match.sum(1, keepdim=True)).sum(1).mean()
        loss_t = -(F.log_softmax(logits.T, dim=1) * match.T / match.T.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model


@torch.no_grad()
def vae_round_trip(vae, images: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Pass a random ``frac`` of the images through the VAE (encode, sample, decode): the reward CLIP then
    also sees the blur and colour drift of decoded images, which every generated image has."""
    images = images.copy()
    idx = np.where(np.random.default_rng(seed).random(len(images)) < frac)[0]
    for s in tqdm(range(0, len(idx), CHUNK), desc="vae round trip", leave=False):
        b = idx[s : s + CHUNK]
        y = vae.decode(vae.encode(to_tensor(images[b])).latent_dist.sample()).sample  # (B, 3, 32, 32) in [-1, 1]
        images[b] = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return images


def save_clip(model, tok, path: str):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    save_json(
        {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": world.IMAGE_SIZE},
            "do_center_crop": True,
            "crop_size": {"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE},
            "do_normalize": True,
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "resample": 3,
            "do_convert_rgb": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
        },
        os.path.join(path, "preprocessor_config.json"),
    )


# ----------------------------------------------------------------------------- main
def main(cfg: PretrainConfig):
    from transformers import CLIPModel, CLIPTokenizer

    torch.manual_seed(cfg.seed)
    clip_dir, sd_dir = os.path.join(cfg.out, "tiny-clip"), os.path.join(cfg.out, "tiny-sd")
    os.makedirs(clip_dir, exist_ok=True)
    times = {}
    parts = ["tokenizer", "clip", "vae", "unet", "reward_clip"] if cfg.part == "all" else [cfg.part]
    images = scenes = None
    if set(parts) & {
        "clip",
        "vae",
        "reward_clip",
    }:  # uniform renders: the encoders are not where the blind spots live (README)
        images, scenes = render_dataset(cfg.n_images, cfg.seed)
    for part in parts:
        t0 = time.time()
        if part == "tokenizer":
            build_tokenizer().save_pretrained(clip_dir)
        elif part == "clip":
            tok = CLIPTokenizer.from_pretrained(clip_dir)
            save_clip(train_clip(cfg, tok, images, scenes), tok, clip_dir)
        elif part == "vae":
            os.makedirs(sd_dir, exist_ok=True)
            vae = train_vae(cfg, images)
            vae.half().save_pretrained(os.path.join(sd_dir, "vae"))
        elif part == "unet":
            from diffusers import AutoencoderKL

            tok = CLIPTokenizer.from_pretrained(clip_dir)
            text_encoder = text_tower(CLIPModel.from_pretrained(clip_dir, dtype=torch.float32))
            vae = AutoencoderKL.from_pretrained(os.path.join(sd_dir, "vae"), torch_dtype=torch.float32)
            unet = train_unet(
                cfg, tok, text_encoder, vae, *render_dataset(cfg.n_images, cfg.seed, world.get_prior(cfg.prior))
            )
            save_pipeline(sd_dir, tok, text_encoder, vae, unet, cfg.prior)
        elif part == "reward_clip":
            from diffusers import AutoencoderKL

            tok = CLIPTokenizer.from_pretrained(clip_dir)
            vae = AutoencoderKL.from_pretrained(os.path.join(sd_dir, "vae"), torch_dtype=torch.float32).eval()
            mixed = vae_round_trip(vae, images, cfg.rclip_p_decoded, cfg.seed + 7)
            rcfg = dataclasses.replace(cfg, clip_steps=cfg.rclip_steps, clip_p_count=cfg.rclip_p_count)
            save_clip(train_clip(rcfg, tok, mixed, scenes), tok, os.path.join(cfg.out, "tiny-reward-clip"))
        times[part] = round(time.time() - t0, 1)
        print(f"{part}: {times[part]} s")
    return times


def parse_args(argv=None) -> PretrainConfig:
    from .config import parse_config

    return parse_config(PretrainConfig, argv, prog="python -m t2idemo pretrain", description=__doc__.split("\n\n")[0])


def cli(argv=None):
    return main(parse_args(argv))


if __name__ == "__main__":
    cli()
