"""Probe what limits the base UNet: train one on a prior and an architecture, then judge it
(docs/findings.md, section 1).

Trains a UNet with `pretrain_diffusion.train_unet` (v-prediction, zero terminal SNR, AdamW + cosine, EMA 0.999) on the
latents of the shipped VAE (or ``--vae``), conditioned on the shipped text encoder, then judges 512 unseen
combination images, 96 per other unseen category and 64 per category of typical prompts at the guidance scales given:

    python scripts/unet_probe.py --prior balanced --steps 2500 --out runs/probe/ref        # the fully taught reference
    python scripts/unet_probe.py --prior laion --steps 2500 --out runs/probe/laion          # the LAION-like base
    python scripts/unet_probe.py --prior balanced --arch '{"block_out_channels": [64, 96, 128], \\
        "down_block_types": ["CrossAttnDownBlock2D"]*3 ...}'                           # any UNet2DConditionModel field
    python scripts/unet_probe.py --prior laion --prior-override '{"p_typical_scene": 0.95}'  # a variant of a prior

Writes the EMA UNet to OUT/unet and one JSON line per evaluation to OUT/probe.jsonl; 2,500 steps take about
25 minutes on 2 idle cores. ``python scripts/unet_probe.py --eval-only OUT`` re-judges a saved UNet.
"""

import argparse
import collections
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from t2idemo import pretrain, pretrain_diffusion, world  # noqa: E402
from t2idemo.config import comma_list
from t2idemo.evaluate import eval_prompts, summarise, tally  # noqa: E402
from t2idemo.generate import BASE_MODEL, sample  # noqa: E402
from t2idemo.judge import judge  # noqa: E402


def load_parts(base: str, vae: str):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        base, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    if vae:
        pipe.vae = AutoencoderKL.from_pretrained(vae, torch_dtype=torch.float32).eval()
    return pipe


def make_unet(arch: dict, cross_dim: int):
    from diffusers import UNet2DConditionModel

    kw = dict(pretrain_diffusion.unet_model(cross_dim).config)  # the shipped architecture, then the overrides
    kw = {k: v for k, v in kw.items() if not k.startswith("_")}
    kw.update(arch)
    return UNet2DConditionModel(**kw)


def build_pipe(parts, unet):
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=unet,
        scheduler=pretrain_diffusion.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    return p


def judge_unet(pipe, guidance: float, steps: int = 15, seed: int = 0, typical: bool = True) -> dict:
    """All-right rates on unseen prompts (and typical ones), plus per-attribute rates on combinations."""
    metas = eval_prompts("unseen", 512, 96, seed) + (eval_prompts("typical", 0, 64, seed) if typical else [])
    imgs = sample(pipe, [m["prompt"] for m in metas], [seed * 100_000 + i for i in range(len(metas))], steps, guidance)
    verdicts = [judge(im, m) for im, m in zip(imgs, metas)]
    s = summarise(tally(verdicts, metas))
    u = s["unseen"]
    res = {
        "guidance": guidance,
        "combo_all": u["combination"]["all"]["p"],
        **{f"combo_{a}": u["combination"][a]["p"] for a in ("count", "color", "shape", "scene")},
        "count_only": u["count"]["all"]["p"],
        "color_only": u["color"]["all"]["p"],
        "bg_only": u["background"]["all"]["p"],
    }
    conf = collections.Counter(
        (m["count"], v["pred"]["count"])
        for v, m in zip(verdicts, metas)
        if m["category"] == "combination" and m["split"] == "unseen"
    )
    res["combo_count_by_n"] = {
        c: round(conf[(c, c)] / max(1, sum(conf[(c, k)] for k in range(8))), 2) for c in world.COUNTS
    }
    if typical:
        t = [v["good"] for v, m in zip(verdicts, metas) if m["split"] == "typical"]
        res["typical_all"] = sum(t) / len(t)
    return {k: (round(float(v), 3) if isinstance(v, (float, np.floating)) else v) for k, v in res.items()}


def train(prior: world.Prior, arch: dict, steps: int, parts, lr: float = 6e-4, n_images: int = 60_000, seed: int = 0):
    """``pretrain_diffusion.train_unet`` on ``prior``'s scenes and captions, with the architecture overrides.
    Returns the EMA UNet."""
    cfg = pretrain.PretrainConfig(part="unet", seed=seed, n_images=n_images, unet_steps=steps, unet_lr=lr)
    images, scenes = pretrain_diffusion.render_dataset(n_images, seed, prior)
    torch.manual_seed(seed)
    unet = make_unet(arch, parts.text_encoder.config.hidden_size)
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters", flush=True)
    t0 = time.time()
    unet = pretrain_diffusion.train_unet(
        cfg, parts.tokenizer, parts.text_encoder, parts.vae, images, scenes, prior=prior, unet=unet
    )
    return unet.eval(), time.time() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for unet/ and probe.jsonl")
    ap.add_argument("--prior", default="balanced", help=f"one of {tuple(world.PRIORS)}")
    ap.add_argument("--prior-override", default="{}", help="JSON of Prior fields to change, e.g. '{\"p_count\": 0.3}'")
    ap.add_argument("--arch", default="{}", help="JSON of UNet2DConditionModel fields to change")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--n-images", type=int, default=60_000, help="renders drawn from the prior")
    ap.add_argument(
        "--base", default=BASE_MODEL, help="pipeline folder whose tokenizer, text encoder and VAE are used"
    )
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
    for i, g in enumerate(comma_list(a.guidance, "--guidance", float)):
        r = {
            "prior": dataclasses.asdict(prior),
            "arch": json.loads(a.arch),
            "steps": a.steps,
            "train_s": round(train_s),
            **judge_unet(build_pipe(parts, unet), g, typical=(i == 0)),
        }
        print(json.dumps(r), flush=True)
        with open(os.path.join(a.out, "probe.jsonl"), "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
