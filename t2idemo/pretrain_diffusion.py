"""The diffusion half of pre-training (``t2idemo.pretrain`` runs it): the tiny SD's VAE and UNet, their noise
schedules, and the pipeline folder they are saved as.

Noise schedule. With SD's schedule the last training step still keeps sqrt(alpha_bar_T) = 0.068 of the
signal, so at sampling time the model starts from noise that it believes carries the image's mean; flat
very dark (night) or very bright (snow) backgrounds then come out grey (Lin et al. 2023, "Common Diffusion
Noise Schedules and Sample Steps are Flawed"). We use their fix, all of it built into diffusers:
``rescale_betas_zero_snr=True`` (zero terminal SNR), ``prediction_type="v_prediction"`` (eps is
meaningless at SNR 0) and ``timestep_spacing="trailing"`` (sampling starts at t = T). Offset noise is
the cheaper alternative; zero SNR needs no extra hyper-parameter.

Weights are written as safetensors; the UNet and VAE are stored in float16 (half the bytes; they load
as float32). The training functions take the command's ``cfg`` (a ``pretrain.PretrainConfig``).
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world

CHUNK = 512  # images per VAE encode / decode call outside training (memory, not results)
SCALE_SAMPLES = 2048  # renders whose latents set the VAE's scaling factor
DECODER_LR_DIVISOR = 3  # the decoder-only fine-tune's peak learning rate is vae_lr / 3
UNET_WEIGHT_DECAY = 0.01  # AdamW weight decay of the UNet (the VAE trains without)
UNET_WARMUP = 200  # UNet learning-rate warm-up steps (the others use cosine_lr's default)
GRAD_CLIP = 1.0  # max global gradient norm of a UNet step
EMA_WARMUP = 10  # the EMA decay ramps as (1 + step) / (EMA_WARMUP + step) up to cfg.unet_ema


# ----------------------------------------------------------------------------- shared helpers
def render_dataset(n: int, seed: int, prior: world.Prior | None = None):
    """n random scenes (uniform over the world, or drawn from ``prior``) -> (uint8 images (N, 32, 32, 3),
    list of Scene)."""
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


def train_vae(cfg, images):
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
        z = vae.encode(to_tensor(images[:SCALE_SAMPLES])).latent_dist.sample()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return finetune_decoder(cfg, vae, images)


def finetune_decoder(cfg, vae, images):
    """Fine-tune the decoder alone on the posterior means, the encoder (and so the latent space) frozen.
    Trained on noisy posterior samples, the decoder learns to blur, and small squares come back round; on the
    means it renders corners again."""
    if not cfg.vae_decoder_steps:
        return vae
    rng = np.random.default_rng(cfg.seed + 4)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vae_lr / DECODER_LR_DIVISOR, weight_decay=0.0)
    bar = tqdm(range(cfg.vae_decoder_steps), desc="vae decoder")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr / DECODER_LR_DIVISOR * cosine_lr(step, cfg.vae_decoder_steps)
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


def train_unet(cfg, tok, text_encoder, vae, images, scenes, prior: world.Prior | None = None, unet=None):
    """Train the UNet on (images, scenes), drawn from ``cfg.prior``, whose captions it also draws. ``prior`` and
    ``unet`` replace ``cfg.prior`` and a fresh ``unet_model`` (scripts/unet_probe.py tries variants of both)."""
    torch.manual_seed(cfg.seed)
    prior = prior or world.get_prior(cfg.prior)
    rng = random.Random(cfg.seed + 3)
    # cache the VAE posterior of every training image; each step samples from it (as SD does)
    mean, std = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), CHUNK), desc="encode", leave=False):
            post = vae.encode(to_tensor(images[i : i + CHUNK])).latent_dist
            mean.append(post.mean)
            std.append(post.std)
    mean, std = torch.cat(mean), torch.cat(std)  # (N, 4, 8, 8) each
    sf = vae.config.scaling_factor
    unet = unet or unet_model(text_encoder.config.hidden_size)
    ema = [p.detach().clone() for p in unet.parameters()]
    noise_scheduler = train_scheduler()
    acp = noise_scheduler.alphas_cumprod  # (T,) alpha_bar_t
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=UNET_WEIGHT_DECAY)
    cache = {}  # caption -> (L, D) text embedding; the text encoder is frozen
    bar = tqdm(range(cfg.unet_steps), desc="unet")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.unet_lr * cosine_lr(step, cfg.unet_steps, warmup=UNET_WARMUP)
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
        torch.nn.utils.clip_grad_norm_(unet.parameters(), GRAD_CLIP)
        opt.step()
        with torch.no_grad():
            d = min(cfg.unet_ema, (1 + step) / (EMA_WARMUP + step))  # EMA warm-up
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
