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

import torch
import torch.nn as nn

from .clip import REWARD_CLIP, SHIPPED_CLIP, FrozenCLIP, pixel_values, resolve_clip, resolve_device  # noqa: F401
from .config import bounds, check_ranges, comma_list, ranged, seed_field
from .reward_attr import KIND as ATTRIBUTE_KIND
from .reward_attr import AttributeReward

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
REWARD_MODEL = os.path.join(ASSETS, "tiny-reward")  # the shipped reward model (head + config; CLIP = tiny-reward-clip)
HEAD_FILE, CONFIG_FILE = "head.safetensors", "reward_config.json"
MODEL_FIELDS = ("clip", "hidden", "dropout")  # RewardConfig fields a saved reward model needs to load and score
TRAINING_FIELDS = (
    "lam",
    "n_prompts",
    "temperature",
    "mlp_penalty",
    "labels",
    "noise",
    "val_frac",
    "batch",
    "lr",
    "weight_decay",
    "max_epochs",
    "patience",
    "seed",
)  # how it was trained: saved as a record


# ----------------------------------------------------------------------------- config
@dataclass
class RewardConfig:
    # --- model
    # frozen CLIP: a CLIPModel folder or hub id; "tiny-reward-clip" / "tiny-clip" = shipped ones
    clip: str = REWARD_CLIP
    # width of the head's two hidden layers
    hidden: int = ranged(256, 1, 65_536)
    # dropout after each hidden layer
    dropout: float = ranged(0.1, 0.0, 0.99)

    # --- loss
    # lambda, weight of the prompt-classification CE
    lam: float = ranged(0.5, 0.0, 100.0)
    # N, candidates per good image: its prompt + N-1 one-attribute swaps
    n_prompts: int = ranged(4, 2, 16)
    # T, the CE's logits are r / T (1 = the paper's raw rewards)
    temperature: float = ranged(1.0, 0.0001, 100.0)
    # rho, weight of mean(MLP(x)^2): keeps the head near the calibrated CLIPScore it
    # starts as, correcting it only where the labels insist
    mlp_penalty: float = ranged(0.1, 0.0, 100.0)

    # --- data
    # training dataset folder: metadata.jsonl + PNGs (generate.generate_dataset)
    data: str = ""
    # where y comes from: "metadata" (the rows' "label" field) | "judge" (noise-free, on the fly)
    labels: str = "metadata"
    # probability of flipping each training label (seeded), for the noise study
    noise: float = ranged(0.0, 0.0, 0.5)
    # fraction of distinct training prompts held out for validation / early stopping
    val_frac: float = ranged(0.15, 0.01, 0.99)

    # --- optimisation
    # labelled images per step
    batch: int = ranged(64, 1, 65_536)
    # AdamW learning rate, constant
    lr: float = ranged(1e-3, 1e-08, 1.0)
    # AdamW weight decay
    weight_decay: float = ranged(1e-2, 0.0, 10.0)
    # upper bound on passes over the training split
    max_epochs: int = ranged(300, 1, 100_000)
    # stop after this many epochs without a better validation loss
    patience: int = ranged(25, 1, 100_000)
    # seeds the split, the label noise, the perturbations and the initial weights
    seed: int = seed_field()
    # "cpu", "cuda", ...; "" = cuda when available
    device: str = ""

    # --- output and evaluation
    # folder: train writes head.safetensors + reward_config.json here, eval reads them
    run: str = "runs/reward"
    # held-out dataset folder (rows with "unseen": true are evaluated), for eval and study
    eval_data: str = ""
    # bootstrap resamples for the AUC CIs
    n_boot: int = ranged(2_000, 100, 1_000_000)
    # calibration PNG written by eval; "" = RUN/calibration.png
    plot: str = ""
    # comma-separated flip probabilities for the study, each 0 - 0.5
    noise_levels: str = "0,0.1,0.2,0.3"

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.labels not in ("metadata", "judge"):
            raise ValueError(f"labels={self.labels!r} is not allowed; use 'metadata' or 'judge'")
        self.levels()  # each a flip probability within noise's range

    def levels(self) -> list[float]:
        return comma_list(self.noise_levels, "noise_levels", float, *bounds(RewardConfig, "noise"))


# ----------------------------------------------------------------------------- the reward model
class RewardHead(nn.Module):
    """sigmoid(a * cos(i, t) + b + MLP([i, t, i * t])). Inputs are unit-norm (..., D), scaled so that each
    MLP feature has roughly unit size whatever D is (a unit vector's entries are about 1 / sqrt(D)).

    The cosine term is a skip connection: the MLP's last layer starts at zero, so a fresh head is a
    calibrated CLIPScore, and training learns the corrections the labels ask for (on a small labelled set
    an MLP started from random weights generalised worse to unseen prompts than CLIPScore itself)."""

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.cos_scale = nn.Parameter(torch.tensor(10.0))  # a: the cosine's slope
        self.cos_bias = nn.Parameter(torch.tensor(0.0))  # b

    def correction(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The MLP's term (...,): what the head adds to the calibrated cosine."""
        d = img.shape[-1]
        x = torch.cat([img * d**0.5, txt * d**0.5, img * txt * d], dim=-1)  # (..., 3D)
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
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
            os.path.join(path, HEAD_FILE),
        )
        cfg = dataclasses.asdict(self.cfg)
        meta = {
            "config": {k: cfg[k] for k in MODEL_FIELDS},
            "clip": self.cfg.clip,
            "embed_dim": self.clip.dim,
            "training": {**(summary or {}), "config": {k: cfg[k] for k in TRAINING_FIELDS}},
        }
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, clip: str | None = None, device: str | None = None) -> RewardModel:
        """Load a folder written by ``save_pretrained``; ``clip`` overrides the CLIP path stored there."""
        from safetensors.torch import load_file

        meta = read_saved(path)
        cfg = RewardConfig(**saved_fields(meta))
        cfg = dataclasses.replace(cfg, clip=clip or cfg.clip, device="" if device is None else device)
        with torch.random.fork_rng():  # the head's random init is overwritten below: loading must not move torch's
            model = cls(cfg)  # global random stream (a fine-tune seeded before it would draw otherwise)
        if model.clip.dim != meta["embed_dim"]:
            raise ValueError(
                f"clip={cfg.clip!r} gives {model.clip.dim}-d embeddings but the head in {path!r} "
                f"was trained on {meta['embed_dim']}-d ones; use the CLIP it was trained with"
            )
        model.head.load_state_dict(load_file(os.path.join(path, HEAD_FILE)))
        return model.eval()


def read_saved(path: str, name: str = "path") -> dict:
    """The ``reward_config.json`` that ``save_pretrained`` wrote in the folder ``path`` (a one-line error naming
    the argument ``name`` when there is none)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ValueError(
            f"{name}={path!r} holds no {CONFIG_FILE}; pass a folder written by `python -m t2idemo reward train`"
        )
    with open(file) as f:
        return json.load(f)


def saved_fields(meta: dict) -> dict:
    """The RewardConfig fields a saved reward model records (model and training ones; older files saved every field,
    of which the rest is ignored)."""
    known = set(MODEL_FIELDS) | set(TRAINING_FIELDS)
    saved = {**meta.get("training", {}).get("config", {}), **meta["config"]}
    return {k: v for k, v in saved.items() if k in known}


def save_reward_model(model: AttributeReward, path: str, summary: dict | None = None) -> None:
    """Write the short session's reward model (``reward_attr``) as the main job's is written: its head's weights in
    head.safetensors, reward_config.json with what loading needs ("kind": "attribute", the CLIP) and, under
    "training", ``summary`` as a record."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file(model.state_dict(), os.path.join(path, HEAD_FILE))
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump({**model.config(), "training": summary or {}}, f, indent=2)


def load_reward_fn(path: str, device: str | None = None, clip: str | None = None):
    """``reward_fn(images: list[PIL.Image], prompts: list[str]) -> torch.Tensor`` of shape (N,), in [0, 1]: the main
    job's reward model, or the short session's (``reward_attr.AttributeReward``, "kind": "attribute"). ``clip``
    overrides the CLIP path saved with it (a pushed model's reward/clip)."""
    meta = read_saved(path)
    if meta.get("kind") == ATTRIBUTE_KIND:
        from safetensors.torch import load_file

        model = AttributeReward.from_state(load_file(os.path.join(path, HEAD_FILE)), meta, clip)
    else:
        model = RewardModel.from_pretrained(path, clip, device)

    def reward_fn(images: list, prompts: list) -> torch.Tensor:
        return model(images, prompts)

    reward_fn.model = model
    return reward_fn
