"""What a fine-tune writes: the tuned StableDiffusionPipeline folder (OUT), its snapshots (OUT/step{n}), and the
DDPM scheduler the model was trained with, which the fine-tune reads back. ``cfg`` is a ``finetune.FinetuneConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch

from . import world
from .finetune_params import save_lora, trained_parameters


def write_tuned(cfg, pipe, unet, noise_scheduler, prior: str, weights) -> None:
    """OUT: the pipeline with the tuned ``unet`` (a LoRA adapter also on its own, then fused in) and finetune.json."""
    if cfg.lora_rank:
        save_lora(unet, cfg.out)  # OUT/pytorch_lora_weights.safetensors, then fused into the UNet saved below
    write_pipeline(cfg.out, pipe, pipe.vae, unet, noise_scheduler, prior)
    with open(os.path.join(cfg.out, "finetune.json"), "w") as f:
        json.dump(
            {"config": dataclasses.asdict(cfg), "n_model": len(weights), "mean_weight": float(weights.mean())},
            f,
            indent=2,
        )


def train_scheduler(model: str, pipe):
    """The DDPM scheduler ``model`` was trained with: its train_scheduler folder, else the pipeline's own config."""
    from diffusers import DDPMScheduler

    train_dir = os.path.join(model, "train_scheduler")
    if os.path.isdir(train_dir):
        return DDPMScheduler.from_pretrained(train_dir)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def write_pipeline(out: str, pipe, vae, unet, noise_scheduler, prior: str) -> None:
    """Save a StableDiffusionPipeline folder (UNet and VAE stored in float16; they load as float32), its training
    scheduler and the prior it learnt from (a later round's D_pre draws from the same prior). ``vae`` and ``unet``
    are cast to float16 in place (no copy: the SD-scale UNet is 1.7 GB)."""
    from diffusers import StableDiffusionPipeline

    half = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet.half(),
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    half.save_pretrained(out, safe_serialization=True)
    noise_scheduler.save_pretrained(os.path.join(out, "train_scheduler"))
    world.write_prior(out, prior)


def save_snapshot(out: str, step: int, pipe, vae, unet, ema, noise_scheduler, prior: str, cfg) -> str:
    """Write the EMA weights at ``step`` as the pipeline OUT/step{step}, on copies: training goes on untouched."""
    import copy

    snap = copy.deepcopy(unet).eval()  # same parameter order as ``unet``, so ``ema`` maps onto its trainable ones
    trainable = [p for _, p in trained_parameters(snap, cfg)]
    assert len(trainable) == len(ema), "the snapshot's trainable parameters differ from the optimiser's"
    with torch.no_grad():
        for e, p in zip(ema, trainable):
            p.copy_(e)
    if getattr(snap, "peft_config", None):  # LoRA: fuse the adapter, as the final write does
        snap.fuse_lora()
        snap.unload_lora()
    path = os.path.join(out, f"step{step}")
    write_pipeline(path, pipe, copy.deepcopy(vae), snap, noise_scheduler, prior)
    return path
