"""The shapes world: a tiny, fully checkable stand-in for the photos Stable Diffusion draws.

An image is 32x32 RGB: one to four identical shapes of one colour on a flat scene, each shape in its own quadrant
(a slot). The slots are there for the tiny UNet: it counts far better with them than with shapes placed freely
(docs/findings.md, sections A.1 and 1.1), so what the base gets wrong is its data.
Prompts come in the paper's four categories (Lee et al. 2023, Table 1):

    count        "two circles"                     names count + shape
    color        "a red square"                    names colour + shape
    background   "a triangle on snow"              names shape + scene
    combination  "three purple circles on grass"   names count + colour + shape + scene

Attributes a prompt leaves out are drawn at random when rendering. Prompt functions return
``(prompt, metadata)`` as in ddpo-pytorch; ``metadata`` holds the category, the names of the
attributes the prompt asks for (``named``) and the value of every attribute it fixes.

Geometry (in 32-pixel units): a count of k fills k of the four slots centred at (8, 8), (24, 8), (8, 24) and
(24, 24), chosen at random, each centre jittered by up to 1.5 px. A shape of size ``s`` centred at ``(cx, cy)``
is a circle of diameter ``s``, an axis-aligned square of side ``s``, or an upright triangle with apex
``(cx, cy - s/2)`` and base from ``(cx - s/2, cy + s/2)`` to ``(cx + s/2, cy + s/2)``. The judge uses the same
definitions.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------- vocabulary
# The judge and every benchmark depend on these exact values.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SCENES = {
    "sky": (170, 210, 240),
    "sand": (225, 205, 150),
    "grass": (140, 195, 120),
    "night": (35, 35, 60),
    "snow": (240, 240, 245),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = (1, 2, 3, 4)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
NAME = "shapes"  # the prompt set's name in dataset rows ("prompt_set") and in generate --prompt-set
JUDGE = True  # t2idemo.judge reads every attribute of a render (t2idemo.prompts)
CATEGORIES = ("count", "color", "background", "combination")
ATTRIBUTES = ("count", "color", "shape", "scene")
# Which attributes each category names (shape is always named: it is the prompt's noun).
NAMED = {
    "count": ("count", "shape"),
    "color": ("color", "shape"),
    "background": ("shape", "scene"),
    "combination": ("count", "color", "shape", "scene"),
}

IMAGE_SIZE = 32  # pixels, the world's resolution
SUPERSAMPLE = 4  # render at 4x (128 px) and box-downsample: anti-aliased edges
MIN_SIZE, MAX_SIZE = 8.0, 11.0  # shape size in pixels at 32x32 (small enough that four fit)
# Layout: each shape sits in its own slot, one per quadrant; a count of k fills k of the four slots, chosen at
# random, and each centre is jittered. The slots teach the tiny UNet to count where free placement did not
# (docs/findings.md, sections A.1 and 1.1): a base that draws the wrong number does so because of its data, as SD does.
SLOTS = ((8.0, 8.0), (24.0, 8.0), (8.0, 24.0), (24.0, 24.0))  # slot centres, pixels at 32x32 (quadrant centres)
JITTER = 1.5  # each centre moves by up to this much in x and in y, pixels (shapes keep >= 2 px apart, 1 px from edges)

# ----------------------------------------------------------------------------- held-out split
# Combinations that never appear in feedback (labelling) prompts. Evaluating on prompts that contain
# one of them is the paper's "unseen" setting. Pre-training (the base model) sees everything, as
# Stable Diffusion had seen "blue dogs" somewhere in LAION before the paper's feedback round.
HELDOUT_COLOR_SHAPE = {("red", "triangle"), ("blue", "circle"), ("orange", "square")}
HELDOUT_COUNT_SHAPE = {(3, "triangle"), (2, "square")}
HELDOUT_SHAPE_SCENE = {("circle", "night"), ("square", "sand")}
HELDOUT_COUNT_COLOR_SCENE = {
    (2, "green", "sky"),
    (3, "purple", "grass"),
    (4, "yellow", "snow"),
    (2, "red", "sand"),
    (4, "blue", "night"),
    (3, "orange", "sky"),
}


def is_unseen(meta: dict) -> bool:
    """True if the prompt names a held-out combination (the paper's unseen prompts)."""
    named = set(meta["named"])
    c, col, sh, sc = meta.get("count"), meta.get("color"), meta.get("shape"), meta.get("scene")
    if {"color", "shape"} <= named and (col, sh) in HELDOUT_COLOR_SHAPE:
        return True
    if {"count", "shape"} <= named and (c, sh) in HELDOUT_COUNT_SHAPE:
        return True
    if {"shape", "scene"} <= named and (sh, sc) in HELDOUT_SHAPE_SCENE:
        return True
    if {"count", "color", "scene"} <= named and (c, col, sc) in HELDOUT_COUNT_COLOR_SCENE:
        return True
    return False


# ----------------------------------------------------------------------------- prompts
def plural(shape: str) -> str:
    return shape + "s"


def caption(count: int | None, color: str | None, shape: str, scene: str | None, state_count: bool) -> str:
    """English for a set of attributes. Without a stated count, one shape reads "a ..." and several
    read as a bare plural ("red circles"), the way LAION captions rarely count."""
    noun = shape if count == 1 else plural(shape)
    words = [noun] if color is None else [color, noun]
    if state_count:
        words.insert(0, COUNT_WORDS[count])
    elif count == 1:
        words.insert(0, "a")
    text = " ".join(words)
    return text if scene is None else f"{text} on {scene}"


def make_prompt(category: str, count=None, color=None, shape=None, scene=None) -> tuple[str, dict]:
    """Build the prompt of ``category`` from the attributes it names. Returns ``(prompt, metadata)``."""
    if category not in NAMED:
        raise ValueError(f"category={category!r} is not one of {CATEGORIES}")
    named = NAMED[category]
    values = {"count": count, "color": color, "shape": shape, "scene": scene}
    for a in ATTRIBUTES:
        if a in named and values[a] is None:
            raise ValueError(f"a {category!r} prompt needs {a}=..., got None")
    check_attributes(**{a: v for a, v in values.items() if v is not None})
    meta = {"category": category, "named": list(named)}
    meta.update({a: values[a] if a in named else None for a in ATTRIBUTES})
    if category in ("color", "background"):
        meta["count"] = 1  # "a red square" asks for one shape; the judge does not check it
    prompt = caption(meta["count"], meta["color"], shape, meta["scene"], state_count="count" in named)
    meta["unseen"] = is_unseen(meta)
    return prompt, meta


def check_attributes(count=None, color=None, shape=None, scene=None) -> None:
    """Raise a ValueError that names the bad argument and what is allowed."""
    if count is not None and count not in COUNTS:
        raise ValueError(f"count={count!r} is not allowed; use one of {COUNTS}")
    if color is not None and color not in COLORS:
        raise ValueError(f"color={color!r} is not allowed; use one of {tuple(COLORS)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not allowed; use one of {SHAPES}")
    if scene is not None and scene not in SCENES:
        raise ValueError(f"scene={scene!r} is not allowed; use one of {tuple(SCENES)}")


def in_grammar(row: dict, make=None, attributes: tuple = ATTRIBUTES) -> bool:
    """True if the row's prompt is exactly what ``make_prompt`` writes for its category and attributes.
    (``make`` and ``attributes``: another prompt set's, which is how ``sd`` reuses this.)"""
    try:
        return (make or make_prompt)(row["category"], **{a: row.get(a) for a in attributes})[0] == row["prompt"]
    except (KeyError, ValueError):
        return False


def perturbations(meta: dict, include_unseen: bool = False, make=None, vocab: dict | None = None) -> list[str]:
    """Every prompt of the same category that differs from ``meta``'s in exactly one named attribute, in a
    fixed order: the negatives of the reward model's prompt-classification loss. Held-out (unseen) combinations
    are left out unless ``include_unseen``. (``make`` and ``vocab``: another prompt set's, as ``sd`` passes.)"""
    make = make or make_prompt
    vocab = vocab or {"count": COUNTS, "color": tuple(COLORS), "shape": SHAPES, "scene": tuple(SCENES)}
    values = {a: meta.get(a) for a in vocab}
    out = []
    for a in meta["named"]:
        for v in vocab[a]:
            if v != values[a]:
                p, m = make(meta["category"], **{**values, a: v})
                if include_unseen or not m["unseen"]:
                    out.append(p)
    return out


def random_prompt(rng: random.Random, category: str | None = None, unseen: bool | None = None) -> tuple[str, dict]:
    """A random prompt of ``category`` (random if None). ``unseen=False`` avoids held-out combinations
    (feedback prompts), ``unseen=True`` insists on one (the unseen evaluation set), None takes either."""
    for _ in range(10_000):
        cat = category or rng.choice(CATEGORIES)
        p, meta = make_prompt(
            cat,
            count=rng.choice(COUNTS),
            color=rng.choice(list(COLORS)),
            shape=rng.choice(SHAPES),
            scene=rng.choice(list(SCENES)),
        )
        if unseen is None or meta["unseen"] == unseen:
            return p, meta
    raise RuntimeError(f"no {category} prompt with unseen={unseen}")


def all_prompts(category: str | None = None, unseen: bool | None = None) -> list[tuple[str, dict]]:
    """Every distinct prompt of the world (optionally of one category / split), in a fixed order."""
    out, seen = [], set()
    for cat in [category] if category else CATEGORIES:
        for c in COUNTS:
            for col in COLORS:
                for sh in SHAPES:
                    for sc in SCENES:
                        p, meta = make_prompt(cat, count=c, color=col, shape=sh, scene=sc)
                        if p not in seen and (unseen is None or meta["unseen"] == unseen):
                            seen.add(p)
                            out.append((p, meta))
    return out


def parse_prompt(prompt: str) -> dict:
    """Read a prompt of the world's grammar back into metadata (the inverse of ``make_prompt``).
    Used where only the text is known, e.g. a prompt typed into the app."""
    words = prompt.strip().lower().split()
    values = {"count": 1 if words[:1] in (["a"], ["an"]) else None, "color": None, "shape": None, "scene": None}
    words = [w for w in words if w not in ("a", "an")]
    named = []
    if "on" in words:
        i = words.index("on")
        if i + 1 < len(words) and words[i + 1] in SCENES:
            values["scene"] = words[i + 1]
            named.append("scene")
        words = words[:i]
    inv = {v: k for k, v in COUNT_WORDS.items()}
    for w in words:
        if w in inv:
            values["count"] = inv[w]
            named.append("count")
        elif w in COLORS:
            values["color"] = w
            named.append("color")
        elif w.rstrip("s") in SHAPES:
            values["shape"] = w.rstrip("s")
            named.append("shape")
        else:
            raise ValueError(
                f"prompt={prompt!r}: word {w!r} is not in the shapes world's vocabulary "
                f"(counts {tuple(COUNT_WORDS.values())}, colours {tuple(COLORS)}, shapes {SHAPES}, "
                f"'on' + scenes {tuple(SCENES)})"
            )
    if values["shape"] is None:
        raise ValueError(f"prompt={prompt!r} names no shape; use one of {SHAPES}")
    order = [a for a in ATTRIBUTES if a in named]
    cat = {
        ("count", "shape"): "count",
        ("color", "shape"): "color",
        ("shape", "scene"): "background",
        ("count", "color", "shape", "scene"): "combination",
    }.get(tuple(order), "other")
    meta = {"category": cat, "named": order, **values}
    meta["unseen"] = is_unseen(meta)
    return meta


# ----------------------------------------------------------------------------- rendering
@dataclass
class Scene:
    """Every attribute of one image, plus where the shapes are (pixel units at 32x32)."""

    count: int
    color: str
    shape: str
    scene: str
    size: float
    centers: list

    def attributes(self) -> dict:
        return {"count": self.count, "color": self.color, "shape": self.shape, "scene": self.scene}


def sample_scene(rng: random.Random, count=None, color=None, shape=None, scene=None) -> Scene:
    """Fill in the attributes left as None at random, then put the shapes in ``count`` of the four slots."""
    check_attributes(count, color, shape, scene)
    count = count or rng.choice(COUNTS)
    color = color or rng.choice(list(COLORS))
    shape = shape or rng.choice(SHAPES)
    scene = scene or rng.choice(list(SCENES))
    size = rng.uniform(MIN_SIZE, MAX_SIZE)
    slots = rng.sample(SLOTS, count)  # which quadrants are filled
    centers = [(x + rng.uniform(-JITTER, JITTER), y + rng.uniform(-JITTER, JITTER)) for x, y in slots]
    return Scene(count, color, shape, scene, size, centers)


def shape_polygon(shape: str, cx: float, cy: float, s: float) -> list:
    """Vertices of a square or triangle (circle: its bounding box), pixel units."""
    h = s / 2
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def render(sc: Scene) -> Image.Image:
    """Draw at 4x with PIL and downsample with a box filter (exact area coverage = anti-aliasing)."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), SCENES[sc.scene])
    draw = ImageDraw.Draw(img)
    for cx, cy in sc.centers:
        pts = [(x * k, y * k) for x, y in shape_polygon(sc.shape, cx, cy, sc.size)]
        if sc.shape == "circle":
            draw.ellipse([pts[0], pts[2]], fill=COLORS[sc.color])
        else:
            draw.polygon(pts, fill=COLORS[sc.color])
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def render_prompt(meta: dict, rng: random.Random) -> tuple[Image.Image, Scene]:
    """Render an image that satisfies a prompt's metadata; unnamed attributes are random."""
    named = set(meta["named"])
    fixed = {a: meta.get(a) for a in ATTRIBUTES if a in named}
    fixed["count"] = meta.get("count")  # "a red square" fixes one shape without naming the count
    sc = sample_scene(rng, **fixed)
    return render(sc), sc


def random_caption(sc: Scene, rng: random.Random, p_count=0.1, p_color=0.75, p_scene=0.75) -> str:
    """A caption for a rendered scene: each attribute is stated with its own probability (the shape always)."""
    return caption(
        sc.count,
        sc.color if rng.random() < p_color else None,
        sc.shape,
        sc.scene if rng.random() < p_scene else None,
        state_count=rng.random() < p_count,
    )


# ----------------------------------------------------------------------------- what a base model learns from
# Stable Diffusion fails the paper's prompts for reasons that live in LAION: most dogs there are brown and on
# grass, a green dog or a dog on the moon is rare, and captions seldom say how many dogs there are. The shapes
# world's base model learns from a prior with the same kind of statistics: each shape has a typical colour and
# a typical scene (the sun is a yellow circle in the sky), most pictures show one shape, and captions seldom state
# the count and often leave the scene out. Every held-out (unseen) pair and triple above is atypical, so the unseen
# prompts are the rare compositions SD gets wrong: blind spots in count, colour and background, each put there by
# the data (the slotted layout lets the same UNet count when it is taught: the README's reference).
TYPICAL_COLOR = {"circle": "yellow", "square": "blue", "triangle": "green"}
TYPICAL_SCENE = {"circle": "sky", "square": "snow", "triangle": "grass"}


@dataclass(frozen=True)
class Prior:
    """A distribution of captioned scenes, the data a model pre-trains on. Shapes are uniform."""

    p_typical_color: float  # probability that a shape has its typical colour (else uniform over all 6); 0 - 1
    p_typical_scene: float  # probability that a shape stands on its typical scene (else uniform over all 5); 0 - 1
    p_count: float  # probability that a caption states the count ("three circles"); 0 - 1
    p_color: float  # probability that a caption states the colour; 0 - 1
    p_scene: float  # probability that a caption states the scene; 0 - 1
    p_one: float | None = None  # probability that a picture shows one shape (else 2-4 uniformly); None: 1-4 uniformly

    def sample_scene(self, rng: random.Random) -> Scene:
        shape = rng.choice(SHAPES)
        color = TYPICAL_COLOR[shape] if rng.random() < self.p_typical_color else rng.choice(list(COLORS))
        scene = TYPICAL_SCENE[shape] if rng.random() < self.p_typical_scene else rng.choice(list(SCENES))
        if self.p_one is None:
            count = rng.choice(COUNTS)
        else:
            count = 1 if rng.random() < self.p_one else rng.choice(COUNTS[1:])
        return sample_scene(rng, count=count, color=color, shape=shape, scene=scene)

    def caption(self, sc: Scene, rng: random.Random) -> str:
        return random_caption(sc, rng, self.p_count, self.p_color, self.p_scene)


PRIORS = {
    # LAION-like: what the base UNet learns from, and the fine-tune's pre-training term D_pre (the paper's LAION term)
    # (most pictures show one shape, few captions say how many: a count blind spot, as SD's)
    "laion": Prior(p_typical_color=0.9, p_typical_scene=0.98, p_count=0.3, p_color=0.75, p_scene=0.5, p_one=0.6),
    # every pair equally likely, every attribute often stated: the "fully taught" reference (measured, not shipped)
    "balanced": Prior(p_typical_color=0.0, p_typical_scene=0.0, p_count=0.75, p_color=0.75, p_scene=0.75),
    # every pair equally likely, counts rarely stated: what the first base learnt from (shipped until the LAION-like
    # one)
    "uniform": Prior(p_typical_color=0.0, p_typical_scene=0.0, p_count=0.1, p_color=0.75, p_scene=0.75),
}


def get_prior(name: str) -> Prior:
    if name not in PRIORS:
        raise ValueError(f"prior={name!r} is not one of {tuple(PRIORS)}")
    return PRIORS[name]


PRIOR_FILE = "prior.json"  # in a pipeline folder: the name of the prior its UNet was pre-trained on


def write_prior(pipeline_dir: str, name: str) -> None:
    get_prior(name)
    with open(os.path.join(pipeline_dir, PRIOR_FILE), "w") as f:
        json.dump({"prior": name}, f)


def read_prior(pipeline_dir: str) -> str:
    """The prior a pipeline's UNet learnt from; "uniform" for a folder without a record (the first base)."""
    path = os.path.join(pipeline_dir, PRIOR_FILE)
    if not os.path.isfile(path):
        return "uniform"
    with open(path) as f:
        name = json.load(f)["prior"]
    get_prior(name)  # a ValueError naming it if the record is unknown
    return name


def is_typical(meta: dict) -> bool:
    """True if a prompt asks only for what the LAION-like prior shows most: the shape's typical colour and scene,
    and one shape if it states a count. A sane base model draws these right (the README's base-model table)."""
    named, sh = set(meta["named"]), meta.get("shape")
    return (
        ("color" not in named or meta.get("color") == TYPICAL_COLOR[sh])
        and ("scene" not in named or meta.get("scene") == TYPICAL_SCENE[sh])
        and ("count" not in named or meta.get("count") == 1)
    )


def typical_prompts(category: str | None = None) -> list[tuple[str, dict]]:
    """The world's typical prompts (``is_typical``), in a fixed order: three per category."""
    return [(p, m) for p, m in all_prompts(category) if is_typical(m)]


def to_array(images) -> np.ndarray:
    """PIL image(s) -> uint8 array (N, H, W, 3)."""
    if isinstance(images, Image.Image):
        images = [images]
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
