"""Stage 2: the reward model r(x, z) in [0, 1], trained on good/bad labels (Lee et al. 2023, Sec. 3.2).

    from t2idemo.reward import load_reward_fn
    reward_fn = load_reward_fn("runs/reward")        # a folder written by `python -m t2idemo reward train`
    scores = reward_fn(images, prompts)               # (N,) rewards in [0, 1]

Model. A frozen ``transformers.CLIPModel`` (the shipped tiny CLIP in the shapes world, or any CLIP such as
``openai/clip-vit-large-patch14`` at SD scale, as in the paper) embeds the image and the prompt. In the shapes
world the default backbone is ``tiny-reward-clip``: the tiny CLIP's recipe, trained also on VAE-decoded renders
and with counts stated more often, so that it reads generated images (``pretrain --part reward_clip``). The
head is ``sigmoid(a * cos(i, t) + b + MLP([i, t, i * t]))`` on unit-norm image and text embeddings. Training
first fits a and b alone on the labels, so the head starts as a calibrated CLIPScore (the MLP's last layer
starts at zero); the MLP then learns the corrections the labels ask for, under a penalty rho * mean(MLP^2)
that keeps it near that start. Downstream code calls ``reward_fn(images, prompts) -> scores``.

Training and evaluation (the loss, its defaults and why) live in ``reward_train``; this module is what a
downloaded reward model needs: the frozen CLIP, the head, and ``load_reward_fn``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .config import check_ranges, ranged
from .pretrain import CLIP_MEAN, CLIP_STD  # OpenAI CLIP's normalisation, used when a CLIP has no preprocessor_config.json

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
SHIPPED_CLIP = "tiny-clip"  # the value of RewardConfig.clip that means the CLIP shipped in t2idemo/assets
REWARD_CLIP = "tiny-reward-clip"  # the shipped reward backbone: the same recipe, also trained on VAE-decoded renders
REWARD_MODEL = os.path.join(ASSETS, "tiny-reward")  # the shipped reward model (head + config; CLIP = tiny-reward-clip)
HEAD_FILE, CONFIG_FILE = "head.safetensors", "reward_config.json"
MODEL_FIELDS = ("clip", "hidden", "dropout")  # RewardConfig fields a saved reward model needs to load and score
TRAINING_FIELDS = ("lam", "n_prompts", "temperature", "mlp_penalty", "labels", "noise", "val_frac", "batch", "lr",
                   "weight_decay", "max_epochs", "patience", "seed")  # how it was trained: saved as a record


# ----------------------------------------------------------------------------- config
@dataclass
class RewardConfig:
    # model
    clip: str = REWARD_CLIP  # frozen CLIP: a CLIPModel folder or hub id; "tiny-reward-clip" / "tiny-clip" = shipped ones
    hidden: int = ranged(256, 1, 65_536)  # width of the head's two hidden layers; 32 - 1_024
    dropout: float = ranged(0.1, 0.0, 0.99)  # dropout after each hidden layer; 0 - 0.5
    # loss
    lam: float = ranged(0.5, 0.0, 100.0)  # lambda, weight of the prompt-classification CE; 0 (MSE only) - 2
    n_prompts: int = ranged(4, 2, 16)  # N, candidates per good image: its prompt + N-1 one-attribute swaps; 2 - 6
    temperature: float = ranged(1.0, 0.0001, 100.0)  # T, the CE's logits are r / T (1 = the paper's raw rewards); 0.05 - 1
    mlp_penalty: float = ranged(0.1, 0.0, 100.0)  # rho, weight of mean(MLP(x)^2): keeps the head near the calibrated CLIPScore it
    #                           starts as, correcting it only where the labels insist; 0 (off) - 1
    # data
    data: str = ""  # training dataset folder: metadata.jsonl + PNGs (generate.generate_dataset)
    labels: str = "metadata"  # where y comes from: "metadata" (the rows' "label" field) | "judge" (noise-free, on the fly)
    noise: float = ranged(0.0, 0.0, 0.5)  # probability of flipping each training label (seeded), for the noise study; 0 - 0.5
    val_frac: float = ranged(0.15, 0.01, 0.99)  # fraction of distinct training prompts held out for validation / early stopping; 0.05 - 0.5
    # optimisation
    batch: int = ranged(64, 1, 65_536)  # labelled images per step; 16 - 512
    lr: float = ranged(1e-3, 1e-08, 1.0)  # AdamW learning rate, constant; 1e-4 - 3e-3
    weight_decay: float = ranged(1e-2, 0.0, 10.0)  # AdamW weight decay; 0 - 0.1
    max_epochs: int = ranged(300, 1, 100_000)  # upper bound on passes over the training split; 10 - 2_000
    patience: int = ranged(25, 1, 100_000)  # stop after this many epochs without a better validation loss; 5 - 100
    seed: int = ranged(0, 0, 2_147_483_647)  # seeds the split, the label noise, the perturbations and the initial weights
    device: str = ""  # "cpu", "cuda", ...; "" = cuda when available
    # output and evaluation
    run: str = "runs/reward"  # folder: train writes head.safetensors + reward_config.json here, eval reads them
    eval_data: str = ""  # held-out dataset folder (rows with "unseen": true are evaluated), for eval and study
    n_boot: int = ranged(2_000, 100, 1_000_000)  # bootstrap resamples for the AUC CIs; 200 - 10_000
    plot: str = ""  # calibration PNG written by eval; "" = RUN/calibration.png
    noise_levels: str = "0,0.1,0.2,0.3"  # comma-separated flip probabilities for the study, each 0 - 0.5

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.labels not in ("metadata", "judge"):
            raise ValueError(f"labels={self.labels!r} is not allowed; use 'metadata' or 'judge'")
        for level in self.levels():
            if not 0 <= level <= 0.5:
                raise ValueError(f"noise_levels={self.noise_levels!r}: {level} is not a flip probability in [0, 0.5]")

    def levels(self) -> list[float]:
        try:
            return [float(x) for x in self.noise_levels.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"noise_levels={self.noise_levels!r} is not a comma-separated list of numbers, "
                             f"e.g. '0,0.1,0.2,0.3'") from None


def resolve_device(device: str) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the frozen CLIP
def resolve_clip(path: str) -> str:
    """"tiny-clip" and "tiny-reward-clip" name the CLIPs shipped in t2idemo/assets; anything else is a path or hub id."""
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
    return {"size": int(size), "crop": crop, "resample": int(pp.get("resample", 3)),
            "mean": pp.get("image_mean", CLIP_MEAN), "std": pp.get("image_std", CLIP_STD)}


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
            x = pixel_values(images[i:i + batch_size], self.pp).to(self.device)
            e = self.model.get_image_features(pixel_values=x)
            out.append(F.normalize(getattr(e, "pooler_output", e).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def embed_texts(self, prompts: list, batch_size: int = 256) -> torch.Tensor:
        """Prompts -> (N, D) unit-norm text embeddings (on the CPU)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(list(prompts[i:i + batch_size]), padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            e = self.model.get_text_features(input_ids=ids["input_ids"].to(self.device),
                                             attention_mask=ids["attention_mask"].to(self.device))
            out.append(F.normalize(getattr(e, "pooler_output", e).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


# ----------------------------------------------------------------------------- the reward model
class RewardHead(nn.Module):
    """sigmoid(a * cos(i, t) + b + MLP([i, t, i * t])). Inputs are unit-norm (..., D), scaled so that each
    MLP feature has roughly unit size whatever D is (a unit vector's entries are about 1 / sqrt(D)).

    The cosine term is a skip connection: the MLP's last layer starts at zero, so a fresh head is a
    calibrated CLIPScore, and training learns the corrections the labels ask for (on a small labelled set
    an MLP started from random weights generalised worse to unseen prompts than CLIPScore itself)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.cos_scale = nn.Parameter(torch.tensor(10.0))  # a: the cosine's slope
        self.cos_bias = nn.Parameter(torch.tensor(0.0))  # b

    def correction(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The MLP's term (...,): what the head adds to the calibrated cosine."""
        d = img.shape[-1]
        x = torch.cat([img * d ** 0.5, txt * d ** 0.5, img * txt * d], dim=-1)  # (..., 3D)
        return self.net(x).squeeze(-1)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        cos = (img * txt).sum(-1)  # (...,) CLIPScore's cosine
        return torch.sigmoid(self.cos_scale * cos + self.cos_bias + self.correction(img, txt))  # (...,) in [0, 1]


class RewardModel(nn.Module):
    """Frozen CLIP + trainable head. ``model(images, prompts)`` returns a (N,) float tensor of rewards."""

    def __init__(self, cfg: RewardConfig, clip: FrozenCLIP | None = None, head: RewardHead | None = None):
        super().__init__()
        self.cfg = cfg
        self.clip = clip or FrozenCLIP(cfg.clip, cfg.device)
        self.head = head or RewardHead(self.clip.dim, cfg.hidden, cfg.dropout)
        self.head.to(self.clip.device)

    @torch.no_grad()
    def forward(self, images: list, prompts: list) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"images and prompts differ in length: {len(images)} != {len(prompts)}")
        img, txt = self.clip.embed_images(images), self.clip.embed_texts(prompts)
        return self.score(img, txt)

    @torch.no_grad()
    def score(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Rewards from (N, D) unit-norm embeddings, in eval mode, on the CPU."""
        self.head.eval()
        dev = next(self.head.parameters()).device
        return self.head(img.to(dev), txt.to(dev)).float().cpu()

    def save_pretrained(self, path: str, summary: dict | None = None):
        """Write the head (safetensors) and ``reward_config.json``: under "config" only what loading and scoring need
        (the CLIP, the head's shape); under "training" how it was trained (the loss and optimiser settings, no
        paths) and its summary, as a record."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  os.path.join(path, HEAD_FILE))
        cfg = dataclasses.asdict(self.cfg)
        meta = {"config": {k: cfg[k] for k in MODEL_FIELDS}, "clip": self.cfg.clip, "embed_dim": self.clip.dim,
                "training": {**(summary or {}), "config": {k: cfg[k] for k in TRAINING_FIELDS}}}
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, clip: str | None = None, device: str | None = None) -> "RewardModel":
        """Load a folder written by ``save_pretrained``; ``clip`` overrides the CLIP path stored there."""
        from safetensors.torch import load_file

        meta = read_saved(path)
        cfg = RewardConfig(**saved_fields(meta))
        cfg = dataclasses.replace(cfg, clip=clip or cfg.clip, device="" if device is None else device)
        with torch.random.fork_rng():  # the head's random init is overwritten below: loading must not move torch's
            model = cls(cfg)            # global random stream (a fine-tune seeded before it would draw otherwise)
        if model.clip.dim != meta["embed_dim"]:
            raise ValueError(f"clip={cfg.clip!r} gives {model.clip.dim}-d embeddings but the head in {path!r} "
                             f"was trained on {meta['embed_dim']}-d ones; use the CLIP it was trained with")
        model.head.load_state_dict(load_file(os.path.join(path, HEAD_FILE)))
        return model.eval()


def read_saved(path: str, name: str = "path") -> dict:
    """The ``reward_config.json`` that ``save_pretrained`` wrote in the folder ``path`` (a one-line error naming
    the argument ``name`` when there is none)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ValueError(f"{name}={path!r} holds no {CONFIG_FILE}; pass a folder written by `python -m t2idemo reward train`")
    with open(file) as f:
        return json.load(f)


def saved_fields(meta: dict) -> dict:
    """The RewardConfig fields a saved reward model records (model and training ones; older files saved every field,
    of which the rest is ignored)."""
    known = set(MODEL_FIELDS) | set(TRAINING_FIELDS)
    saved = {**meta.get("training", {}).get("config", {}), **meta["config"]}
    return {k: v for k, v in saved.items() if k in known}


def load_reward_fn(path: str, device: str | None = None):
    """``reward_fn(images: list[PIL.Image], prompts: list[str]) -> torch.Tensor`` of shape (N,), in [0, 1]."""
    model = RewardModel.from_pretrained(path, device=device)

    def reward_fn(images: list, prompts: list) -> torch.Tensor:
        return model(images, prompts)

    reward_fn.model = model
    return reward_fn
