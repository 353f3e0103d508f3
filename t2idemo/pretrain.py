"""Pre-train the tiny Stable Diffusion stack on the shapes world, piece by piece, as SD was built.

    python -m t2idemo pretrain --part all                 # tokenizer, CLIP, VAE, UNet -> t2idemo/assets
    python -m t2idemo pretrain --part vae --vae-steps 20  # one piece, a few steps (the tests do this)

Pieces, in order (each reads the ones before it from ``--out``):
1. tokenizer: ``world.build_tokenizer``, a CLIP BPE tokenizer whose vocabulary is the world's words (one token each).
2. clip: a tiny ``transformers.CLIPModel`` trained contrastively on renders and captions. Its text tower
   is the pipeline's text encoder; the whole model is the reward model's backbone (stage 2).
3. vae: a tiny ``AutoencoderKL``, 32x32x3 <-> 8x8x4 latents (SD: 512x512x3 <-> 64x64x4).
4. unet: a ``UNet2DConditionModel`` trained on the VAE's latents, conditioned on the frozen text tower.

Noise schedule. With SD's schedule the last training step still keeps sqrt(alpha_bar_T) = 0.068 of the
signal, so at sampling time the model starts from noise that it believes carries the image's mean; flat
very dark (night) or very bright (snow) backgrounds then come out grey (Lin et al. 2023, "Common Diffusion
Noise Schedules and Sample Steps are Flawed"). We use their fix, all of it built into diffusers:
``rescale_betas_zero_snr=True`` (zero terminal SNR), ``prediction_type="v_prediction"`` (eps is
meaningless at SNR 0) and ``timestep_spacing="trailing"`` (sampling starts at t = T). Offset noise is
the cheaper alternative; zero SNR needs no extra hyper-parameter.

Weights are written as safetensors; the UNet and VAE are stored in float16 (half the bytes; they load
as float32) and the small text models in float32.
"""

from __future__ import annotations

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

from . import world
from .clip import CLIP_MEAN, CLIP_STD  # OpenAI CLIP's normalisation, kept for parity
from .config import check_ranges, ranged
from .world import TOKEN_LENGTH, build_tokenizer

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


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


# ----------------------------------------------------------------------------- shared helpers
def render_dataset(n: int, seed: int, prior: world.Prior | None = None):
    """n random scenes (uniform over the world, or drawn from ``prior``) -> (uint8 images (N, 32, 32, 3), list of Scene)."""
    rng = random.Random(seed)
    scenes = [prior.sample_scene(rng) if prior else world.sample_scene(rng) for _ in range(n)]
    images = np.stack([np.asarray(world.render(s)) for s in tqdm(scenes, desc="render", leave=False)])
    return images, scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.05)
    bar = tqdm(range(cfg.clip_steps), desc="clip")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.clip_lr * cosine_lr(step, cfg.clip_steps)
        idx = rng.sample(range(len(scenes)), cfg.clip_batch)
        caps, stated = [], codes[idx].clone()  # (B, 4)
        for k, i in enumerate(idx):  # a random caption per image; remember what it states
            sc = scenes[i]
            say_count = rng.random() < cfg.clip_p_count
            color = sc.color if rng.random() < 0.8 else None
            scene = sc.scene if rng.random() < 0.8 else None
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
    for s in tqdm(range(0, len(idx), 512), desc="vae round trip", leave=False):
        b = idx[s : s + 512]
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


# ----------------------------------------------------------------------------- 3. VAE
def vae_model():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=world.IMAGE_SIZE,
    )


def train_vae(cfg: PretrainConfig, images):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 2)
    vae = vae_model()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    bar = tqdm(range(cfg.vae_steps), desc="vae")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * cosine_lr(step, cfg.vae_steps)
        x = to_tensor(images[rng.choice(len(images), cfg.vae_batch, replace=False)])  # (B, 3, 32, 32)
        post = vae.encode(x).latent_dist  # diagonal Gaussian over (B, 4, 8, 8)
        recon = vae.decode(post.sample()).sample  # (B, 3, 32, 32)
        rec = F.mse_loss(recon, x)
        kl = post.kl().mean() / post.mean[0].numel()  # per latent element
        loss = rec + cfg.vae_kl * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{rec.item():.4f}", kl=f"{kl.item():.2f}")
    # SD scales latents to unit variance with a fixed factor stored in the config (0.18215 for SD 1.x)
    with torch.no_grad():
        z = vae.encode(to_tensor(images[:2048])).latent_dist.sample()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return finetune_decoder(cfg, vae, images)


def finetune_decoder(cfg: PretrainConfig, vae, images):
    """Fine-tune the decoder alone on the posterior means, the encoder (and so the latent space) frozen.
    Trained on noisy posterior samples (std about 0.37 at KL weight 1e-3), the decoder learns to blur: an
    8-pixel square came back round 23% of the time. On the means it renders corners again."""
    if not cfg.vae_decoder_steps:
        return vae
    rng = np.random.default_rng(cfg.seed + 4)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr / 3, weight_decay=0.0)
    bar = tqdm(range(cfg.vae_decoder_steps), desc="vae decoder")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr / 3 * cosine_lr(step, cfg.vae_decoder_steps)
        x = to_tensor(images[rng.choice(len(images), cfg.vae_batch, replace=False)])  # (B, 3, 32, 32)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean  # (B, 4, 8, 8) the frozen encoder's posterior mean
        loss = F.mse_loss(vae.decode(z).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{loss.item():.4f}")
    return vae


# ----------------------------------------------------------------------------- 4. UNet
def unet_model(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        block_out_channels=(64, 96),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
        # the text's pooled embedding is added to the timestep embedding, so every block sees the
        # whole prompt (diffusers' "text" addition embedding; docs/findings.md, section 1.1)
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def train_scheduler():
    """The training noise schedule: SD's scaled-linear betas, rescaled to zero terminal SNR."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
    )


def sample_scheduler():
    """The fast sampler the pipeline ships with: DPM-Solver++ (2M) on the same schedule."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )


@torch.no_grad()
def encode_text(text_encoder, tok, captions: list) -> torch.Tensor:
    """Exactly what StableDiffusionPipeline.encode_prompt does: pad to model_max_length, no mask."""
    ids = tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids)[0]  # (B, L, D) last hidden state


def train_unet(
    cfg: PretrainConfig, tok, text_encoder, vae, images, scenes, prior: world.Prior | None = None, unet=None
):
    """Train the UNet on (images, scenes), drawn from ``cfg.prior``, whose captions it also draws. ``prior`` and
    ``unet`` replace ``cfg.prior`` and a fresh ``unet_model`` (scripts/unet_probe.py tries variants of both)."""
    torch.manual_seed(cfg.seed)
    prior = prior or world.get_prior(cfg.prior)
    rng = random.Random(cfg.seed + 3)
    # cache the VAE posterior of every training image; each step samples from it (as SD does)
    mean, std = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), 512), desc="encode", leave=False):
            post = vae.encode(to_tensor(images[i : i + 512])).latent_dist
            mean.append(post.mean)
            std.append(post.std)
    mean, std = torch.cat(mean), torch.cat(std)  # (N, 4, 8, 8) each
    sf = vae.config.scaling_factor
    unet = unet or unet_model(text_encoder.config.hidden_size)
    ema = [p.detach().clone() for p in unet.parameters()]
    noise_scheduler = train_scheduler()
    acp = noise_scheduler.alphas_cumprod  # (T,) alpha_bar_t
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    cache = {}  # caption -> (L, D) text embedding; the text encoder is frozen
    bar = tqdm(range(cfg.unet_steps), desc="unet")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * cosine_lr(step, cfg.unet_steps, warmup=200)
        idx = rng.sample(range(len(scenes)), cfg.unet_batch)
        caps = ["" if rng.random() < cfg.p_uncond else prior.caption(scenes[i], rng) for i in idx]
        for c in set(caps) - cache.keys():
            cache[c] = encode_text(text_encoder, tok, [c])[0]
        cond = torch.stack([cache[c] for c in caps])  # (B, L, D)
        x0 = (mean[idx] + std[idx] * torch.randn_like(std[idx])) * sf  # (B, 4, 8, 8) clean latents
        noise = torch.randn_like(x0)  # (B, 4, 8, 8) eps
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),))  # (B,)
        a = acp[t].sqrt()[:, None, None, None]  # sqrt(alpha_bar_t)
        s = (1 - acp[t]).sqrt()[:, None, None, None]  # sqrt(1 - alpha_bar_t)
        xt = a * x0 + s * noise  # forward process q(x_t | x_0)
        target = a * noise - s * x0  # v = sqrt(ab) eps - sqrt(1 - ab) x0
        loss = F.mse_loss(unet(xt, t, cond).sample, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(cfg.unet_ema, (1 + step) / (10 + step))  # EMA warm-up
            for e, p in zip(ema, unet.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    return unet


def text_tower(clip):
    """The CLIP's text tower as a stand-alone CLIPTextModel: SD's text encoder."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    return te.eval().requires_grad_(False)


def save_pipeline(path: str, tok, text_encoder, vae, unet, prior: str):
    """Write a StableDiffusionPipeline folder that plain diffusers loads (no safety checker), with a record of
    the prior its UNet learnt from (the fine-tune's D_pre draws from it)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet.half(),
        scheduler=sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    train_scheduler().save_pretrained(os.path.join(path, "train_scheduler"))  # the schedule training uses
    world.write_prior(path, prior)
    vae.float()
    unet.float()


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
