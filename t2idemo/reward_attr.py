"""The few-label reward: CLIP's own check of each attribute a prompt names, calibrated on one person's labels.

    from t2idemo.reward_attr import AttributeReward
    model = AttributeReward.fit(images, prompts, labels)   # labels: 1.0 good / 0.0 bad, one per image; [] = none
    save_reward_model(model, "runs/app/reward")             # t2idemo.reward: then load_reward_fn loads it
    scores = model(images, prompts)                         # (N,) rewards in [0, 1]

Why. The main job's reward head (``reward.RewardHead``) learns an MLP on CLIP embeddings from about a thousand
labels. A visitor of the app gives tens to a few hundred, and a head trained on so few forgets what its CLIP
already knows: the frozen CLIP alone ranks generated images against the judge better than the head does at
that size (docs/guide.md, "A short session"). So the session's reward starts from what CLIP says and learns only a
handful of numbers from the labels.

Features. For an image x and its prompt z, and each attribute a that z names (count, colour, shape, scene):

    m_a(x, z) = cos(x, z) - max over z' (z with a swapped for each other value) of cos(x, z')

the attribute's margin: positive when CLIP prefers the asked value of a to every other value, a zero-shot check of
that one attribute (the paper's prompt classification, asked of CLIP). An attribute z does not name gets m_a = 0.
The features are [min_a m_a, m_count, m_colour, m_shape, m_scene]: the first says "every named attribute is right".

Head. r(x, z) = sigmoid(b + w . features). With no labels it is ``PRIOR_SLOPE`` * min_a m_a: r > 0.5 exactly where
CLIP finds every named attribute right. Labels fit w and b by logistic regression, pulled towards that start by an
L2 penalty of ``PULL`` / n_labels (w relative to PRIOR_SLOPE, b in logits), so a few labels move it a little and
many move it more; 6 numbers cannot memorise a few dozen images the way an MLP does. The pull on the bias
matters: the fine-tune keeps images with r >= 0.5, and a free bias fitted to 48 labels with a tenth of them flipped
moved that threshold until a third of the unseen images it kept were wrong (docs/guide.md, "A short session").
``reward.save_reward_model`` writes it as safetensors and reward_config.json ("kind": "attribute");
``reward.load_reward_fn`` loads it like the main job's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import world
from .clip import REWARD_CLIP, FrozenCLIP

KIND = "attribute"  # reward_config.json's "kind" for this reward (the main job's head has none)
PRIOR_SLOPE = 50.0  # the start's weight on min_a m_a: a margin of 0.02 (cosine units) gives r = 0.73
PULL = 200.0  # L2 pull towards the start, divided by the number of labels: 200 labels weigh as much as the start
VOCAB = {"count": world.COUNTS, "color": tuple(world.COLORS), "shape": world.SHAPES, "scene": tuple(world.SCENES)}
N_FEATURES = 1 + len(world.ATTRIBUTES)


def swapped_prompts(meta: dict) -> dict:
    """{attribute: the prompts that differ from ``meta``'s in that one named attribute} (held-out ones included:
    nothing is trained on them, they only ask CLIP a question)."""
    values = {a: meta.get(a) for a in world.ATTRIBUTES}
    return {
        a: [world.make_prompt(meta["category"], **{**values, a: v})[0] for v in VOCAB[a] if v != values[a]]
        for a in meta["named"]
    }


class AttributeReward:
    """CLIP's attribute margins and a logistic head of ``N_FEATURES`` weights and a bias."""

    def __init__(self, clip: str | FrozenCLIP = REWARD_CLIP, weight=None, bias: float = 0.0):
        self.clip = clip if isinstance(clip, FrozenCLIP) else FrozenCLIP(clip)
        self.weight = self.start_weight() if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.bias = float(bias)

    # ------------------------------------------------------------------------- features
    @torch.no_grad()
    def features(self, images: list, prompts: list) -> torch.Tensor:
        """(N, N_FEATURES): [min_a m_a, m_count, m_colour, m_shape, m_scene] for each (image, prompt)."""
        metas = [world.parse_prompt(p) for p in prompts]
        swaps = [swapped_prompts(m) for m in metas]
        texts = list(dict.fromkeys([*prompts, *(q for s in swaps for qs in s.values() for q in qs)]))
        index = {t: i for i, t in enumerate(texts)}
        sims = self.clip.embed_images(images) @ self.clip.embed_texts(texts).T  # (N, T) cosines
        out = torch.zeros(len(images), N_FEATURES)
        for i, (prompt, swap) in enumerate(zip(prompts, swaps)):
            own = sims[i, index[prompt]]  # cos(x, z)
            for a, qs in swap.items():
                out[i, 1 + world.ATTRIBUTES.index(a)] = own - sims[i, [index[q] for q in qs]].max()  # m_a
            out[i, 0] = min(out[i, 1 + world.ATTRIBUTES.index(a)] for a in swap) if swap else 0.0
        return out

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) rewards in [0, 1] from (N, N_FEATURES) features."""
        return torch.sigmoid(features @ self.weight + self.bias)

    def __call__(self, images: list, prompts: list) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"images and prompts differ in length: {len(images)} != {len(prompts)}")
        return self.score(self.features(images, prompts))

    # ------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, images: list, prompts: list, labels, clip: str | FrozenCLIP = REWARD_CLIP) -> AttributeReward:
        """The start, then the head fitted on ``labels`` (1 good, 0 bad), one per (image, prompt)."""
        model = cls(clip)
        return model.fit_features(model.features(images, prompts), labels)

    def fit_features(self, features: torch.Tensor, labels) -> AttributeReward:
        """Logistic regression of the head on (N, N_FEATURES) ``features`` and ``labels``, pulled towards the start;
        no labels leave it at the start. Returns self."""
        if len(labels):
            start = AttributeReward.start_weight()
            self.weight, self.bias = fit_logistic(features, torch.as_tensor(labels).float(), start, 0.0)
        return self

    @staticmethod
    def start_weight() -> torch.Tensor:
        """(N_FEATURES,) the head's weights before any label: ``PRIOR_SLOPE`` on min_a m_a, 0 on the rest."""
        w = torch.zeros(N_FEATURES)
        w[0] = PRIOR_SLOPE
        return w

    # ------------------------------------------------------------------------- what reward.save_reward_model writes
    def state_dict(self) -> dict:
        return {"weight": self.weight.contiguous(), "bias": torch.tensor([self.bias])}

    def config(self) -> dict:
        return {"kind": KIND, "clip": self.clip.path, "features": ["min", *world.ATTRIBUTES]}

    @classmethod
    def from_state(cls, state: dict, meta: dict, clip: str | None = None) -> AttributeReward:
        """The model ``reward.load_reward_fn`` reads back: ``state`` (state_dict's tensors), ``meta`` (config's)."""
        return cls(clip or meta["clip"], state["weight"], float(state["bias"][0]))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: float, steps: int = 100) -> tuple:
    """Weights and bias minimising the logistic loss on (x (N, K), y (N,)) plus (PULL / N) * (|w - w0|^2 /
    PRIOR_SLOPE^2 + (b - b0)^2): the fit stays at the start until enough labels say otherwise. L-BFGS,
    deterministic, milliseconds."""
    w = w0.clone().requires_grad_(True)
    b = torch.tensor(float(b0), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        pull = ((w - w0) / PRIOR_SLOPE).pow(2).sum() + (b - b0).pow(2)  # relative to the start's size; bias in logits
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + PULL / len(y) * pull
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach())
