"""The frozen CLIP that scores images against prompts: a transformers CLIPModel, its tokenizer and preprocessing.

    from t2idemo.clip import FrozenCLIP
    clip = FrozenCLIP("tiny-reward-clip")           # a CLIPModel folder, a hub id, or a CLIP shipped in t2idemo/assets
    img, txt = clip.embed_images(images), clip.embed_texts(prompts)   # (N, D) unit-norm embeddings each

Both reward models read images through it (``reward``: the main job's head; ``reward_attr``: the short session's),
and the tiny CLIP's pre-training (``pretrain``) normalises its pixels as it does.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
SHIPPED_CLIP = "tiny-clip"  # the CLIP shipped in t2idemo/assets
REWARD_CLIP = "tiny-reward-clip"  # the shipped reward backbone: the same recipe, also trained on VAE-decoded renders
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP's normalisation, kept for parity
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def resolve_device(device: str) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_clip(path: str) -> str:
    """ "tiny-clip" and "tiny-reward-clip" name the CLIPs shipped in t2idemo/assets; anything else is a path or
    hub id."""
    return os.path.join(ASSETS, path) if path in (SHIPPED_CLIP, REWARD_CLIP) else path


def read_preprocess(path: str, image_size: int) -> dict:
    """Resize / crop / normalise settings from the CLIP's preprocessor_config.json, when it has one.
    (transformers' CLIPImageProcessor needs torchvision; this does the same with PIL and torch.)"""
    pp = {}
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isdir(path):  # a hub id: the file sits in the hub cache next to the weights
        try:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(path, "preprocessor_config.json")
        except Exception:  # no file on the hub, or offline: fall back to OpenAI's settings
            file = ""
    if file and os.path.isfile(file):
        with open(file) as f:
            pp = json.load(f)
    size, crop = pp.get("size", image_size), pp.get("crop_size", image_size)
    size = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
    crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    return {
        "size": int(size),
        "crop": crop,
        "resample": int(pp.get("resample", 3)),
        "mean": pp.get("image_mean", CLIP_MEAN),
        "std": pp.get("image_std", CLIP_STD),
    }


def pixel_values(images: list, pp: dict) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) CLIP input: resize the short side, centre-crop, scale to [0, 1], normalise."""
    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        scale = pp["size"] / min(w, h)
        if (round(w * scale), round(h * scale)) != (w, h):
            im = im.resize((round(w * scale), round(h * scale)), Image.Resampling(pp["resample"]))
            w, h = im.size
        ch, cw = pp["crop"]
        left, top = (w - cw) // 2, (h - ch) // 2
        im = im.crop((left, top, left + cw, top + ch))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()))
    x = torch.stack(out).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    return (x - torch.tensor(pp["mean"])[:, None, None]) / torch.tensor(pp["std"])[:, None, None]


class FrozenCLIP(nn.Module):
    """A transformers CLIPModel with its tokenizer and preprocessing; returns unit-norm embeddings."""

    def __init__(self, path: str = SHIPPED_CLIP, device: str = ""):
        from transformers import AutoTokenizer, CLIPModel

        super().__init__()
        self.path = path
        local = resolve_clip(path)
        if not os.path.isdir(local) and (local.startswith((".", "/", "~")) or local.count("/") != 1):
            raise ValueError(f"clip={path!r} is neither an existing CLIPModel folder nor a hub id like 'org/name'")
        self.model = CLIPModel.from_pretrained(local, dtype=torch.float32).eval().requires_grad_(False)
        self.model.to(resolve_device(device))
        self.tokenizer = AutoTokenizer.from_pretrained(local)
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        self.pp = read_preprocess(local, self.model.config.vision_config.image_size)

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_images(self, images: list, batch_size: int = 256) -> torch.Tensor:
        """PIL images -> (N, D) unit-norm image embeddings (on the CPU)."""
        out = []
        for i in range(0, len(images), batch_size):
            x = pixel_values(images[i : i + batch_size], self.pp).to(self.device)
            e = self.model.get_image_features(pixel_values=x)
            out.append(F.normalize(getattr(e, "pooler_output", e).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def embed_texts(self, prompts: list, batch_size: int = 256) -> torch.Tensor:
        """Prompts -> (N, D) unit-norm text embeddings (on the CPU)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            e = self.model.get_text_features(
                input_ids=ids["input_ids"].to(self.device), attention_mask=ids["attention_mask"].to(self.device)
            )
            out.append(F.normalize(getattr(e, "pooler_output", e).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)
