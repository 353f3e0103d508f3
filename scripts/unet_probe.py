"""Probe what limits the base UNet: train one on a prior and an architecture, then judge it (docs/findings.md, section 1).

Trains a UNet with `pretrain`'s recipe (v-prediction, zero terminal SNR, AdamW + cosine, EMA 0.999) on the
latents of the shipped VAE (or ``--vae``), conditioned on the shipped text encoder, then judges 512 unseen
combination images, 96 per other unseen category and 64 per category of typical prompts at the guidance scales given:

    python scripts/unet_probe.py --prior balanced --steps 2500 --out runs/probe/ref        # the fully taught reference
    python scripts/unet_probe.py --prior laion --steps 2500 --out runs/probe/laion          # the LAION-like base
    python scripts/unet_probe.py --prior balanced --arch '{"block_out_channels": [64, 96, 128], \\
        "down_block_types": ["CrossAttnDownBlock2D"]*3 ...}'                                 # any UNet2DConditionModel field
    python scripts/unet_probe.py --prior laion --prior-override '{"p_typical_scene": 0.95}'  # a variant of a prior

Writes the EMA UNet to OUT/unet and one JSON line per evaluation to OUT/probe.jsonl; 2,500 steps take about
25 minutes on 2 idle cores. ``python scripts/unet_probe.py --eval-only OUT`` re-judges a saved UNet.
"""
import argparse
import collections
import copy
import dataclasses
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from t2idemo import pretrain, world  # noqa: E402
from t2idemo.evaluate import eval_prompts, summarise, tally  # noqa: E402
from t2idemo.generate import BASE_MODEL, sample  # noqa: E402
from t2idemo.judge import judge  # noqa: E402


def load_parts(base: str, vae: str):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    if vae:
        pipe.vae = AutoencoderKL.from_pretrained(vae, torch_dtype=torch.float32).eval()
    return pipe


def make_unet(arch: dict, cross_dim: int):
    from diffusers import UNet2DConditionModel

    kw = dict(pretrain.unet_model(cross_dim).config)  # the shipped architecture, then the overrides
    kw = {k: v for k, v in kw.items() if not k.startswith("_")}
    kw.update(arch)
    return UNet2DConditionModel(**kw)


def build_pipe(parts, unet):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                scheduler=pretrain.sample_scheduler(), safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def judge_unet(pipe, guidance: float, steps: int = 15, seed: int = 0, typical: bool = True) -> dict:
    """All-right rates on unseen prompts (and typical ones), plus per-attribute rates on combinations."""
    metas = eval_prompts("unseen", 512, 96, seed) + (eval_prompts("typical", 0, 64, seed) if typical else [])
    imgs = sample(pipe, [m["prompt"] for m in metas], [seed * 100_000 + i for i in range(len(metas))], steps, guidance)
    verdicts = [judge(im, m) for im, m in zip(imgs, metas)]
    s = summarise(tally(verdicts, metas))
    u = s["unseen"]
    res = {"guidance": guidance, "combo_all": u["combination"]["all"]["p"],
           **{f"combo_{a}": u["combination"][a]["p"] for a in ("count", "color", "shape", "scene")},
           "count_only": u["count"]["all"]["p"], "color_only": u["color"]["all"]["p"], "bg_only": u["background"]["all"]["p"]}
    conf = collections.Counter((m["count"], v["pred"]["count"]) for v, m in zip(verdicts, metas)
                               if m["category"] == "combination" and m["split"] == "unseen")
    res["combo_count_by_n"] = {c: round(conf[(c, c)] / max(1, sum(conf[(c, k)] for k in range(8))), 2) for c in world.COUNTS}
    if typical:
        t = [v["good"] for v, m in zip(verdicts, metas) if m["split"] == "typical"]
        res["typical_all"] = sum(t) / len(t)
    return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in res.items()}


def train(prior: world.Prior, arch: dict, steps: int, parts, batch: int = 128, lr: float = 6e-4, n_images: int = 60_000,
          seed: int = 0, p_uncond: float = 0.1, ema_decay: float = 0.999, warmup: int = 200):
    """pretrain.train_unet's loop, on ``prior``'s scenes and captions. Returns the EMA UNet."""
    tok, te, vae = parts.tokenizer, parts.text_encoder, parts.vae
    rng = random.Random(seed)
    images, scenes = pretrain.render_dataset(n_images, seed, prior)
    with torch.no_grad():  # posterior mean and std of every image, encoded once
        posts = [vae.encode(pretrain.to_tensor(images[i:i + 512])).latent_dist for i in range(0, n_images, 512)]
    mean, std = torch.cat([p.mean for p in posts]), torch.cat([p.std for p in posts])  # (N, 4, 8, 8) each
    torch.manual_seed(seed)
    unet = make_unet(arch, te.config.hidden_size)
    params = list(unet.parameters())
    print(f"UNet {sum(p.numel() for p in params) / 1e6:.2f} M parameters", flush=True)
    ema = [p.detach().clone() for p in params]
    acp = pretrain.train_scheduler().alphas_cumprod
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    cache, t0 = {}, time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * pretrain.cosine_lr(step, steps, warmup=warmup)
        idx = rng.sample(range(n_images), batch)
        caps = ["" if rng.random() < p_uncond else prior.caption(scenes[i], rng) for i in idx]
        for c in set(caps) - cache.keys():
            cache[c] = pretrain.encode_text(te, tok, [c])[0]
        cond = torch.stack([cache[c] for c in caps])  # (B, L, D)
        x0 = (mean[idx] + std[idx] * torch.randn_like(std[idx])) * vae.config.scaling_factor  # (B, 4, 8, 8)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        a, s = acp[t].sqrt()[:, None, None, None], (1 - acp[t]).sqrt()[:, None, None, None]
        loss = F.mse_loss(unet(a * x0 + s * noise, t, cond).sample, a * noise - s * x0)  # v-prediction
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema, params):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        if (step + 1) % 250 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    out = copy.deepcopy(unet).eval()
    with torch.no_grad():
        for e, p in zip(ema, out.parameters()):
            p.copy_(e)
    return out, time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for unet/ and probe.jsonl")
    ap.add_argument("--prior", default="balanced", help=f"one of {tuple(world.PRIORS)}")
    ap.add_argument("--prior-override", default="{}", help="JSON of Prior fields to change, e.g. '{\"p_count\": 0.3}'")
    ap.add_argument("--arch", default="{}", help="JSON of UNet2DConditionModel fields to change")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--n-images", type=int, default=60_000, help="renders drawn from the prior")
    ap.add_argument("--base", default=BASE_MODEL, help="pipeline folder whose tokenizer, text encoder and VAE are used")
    ap.add_argument("--vae", default="", help="AutoencoderKL folder replacing the base's VAE")
    ap.add_argument("--guidance", default="3,5", help="comma-separated guidance scales to judge at")
    ap.add_argument("--eval-only", action="store_true", help="judge OUT/unet instead of training")
    a = ap.parse_args(argv)
    prior = dataclasses.replace(world.get_prior(a.prior), **json.loads(a.prior_override))
    parts = load_parts(a.base, a.vae)
    os.makedirs(a.out, exist_ok=True)
    if a.eval_only:
        from diffusers import UNet2DConditionModel

        unet, train_s = UNet2DConditionModel.from_pretrained(os.path.join(a.out, "unet")).eval(), 0.0
    else:
        unet, train_s = train(prior, json.loads(a.arch), a.steps, parts, lr=a.lr, n_images=a.n_images)
        unet.save_pretrained(os.path.join(a.out, "unet"))
    for i, g in enumerate(float(x) for x in a.guidance.split(",")):
        r = {"prior": dataclasses.asdict(prior), "arch": json.loads(a.arch), "steps": a.steps, "train_s": round(train_s),
             **judge_unet(build_pipe(parts, unet), g, typical=(i == 0))}
        print(json.dumps(r), flush=True)
        with open(os.path.join(a.out, "probe.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
