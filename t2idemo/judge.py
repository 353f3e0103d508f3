"""A programmatic rater that stands in for a person in the shapes world.

``judge(image, meta)`` reads an image's count, colour, shape and background and compares them with the
attributes the prompt names. It works on crisp renders and on what a diffusion model draws, which is
blurrier, noisier and slightly off-palette. How it copes with that, step by step:

1. Background: the per-channel *median* of a 2-pixel frame round the image (renders keep shapes 1 px
   from the border, so the frame is mostly scene; the median ignores a shape that pokes in and pixel
   noise). The scene is the palette scene nearest to it.
2. Foreground: each pixel's distance from that measured background colour. The shape colour is the
   median of the "core" pixels (distance above 60% of the 99th percentile), so blurred edges and noise
   do not drag it; the colour is the nearest palette colour to it.
3. Coverage: every pixel gets an alpha in [0, 1] by projecting it onto the segment from the measured
   background to the measured shape colour. Anti-aliased or blurred edges get fractional alpha.
4. Count: connected components of alpha > 0.5, keeping only those whose total alpha is at least
   ``MIN_AREA`` pixels (specks of noise do not count as shapes).
5. Shape: each component is compared with an anti-aliased template of a circle, square and triangle of
   the same area and centroid (L1 distance on alpha); the majority over components wins. Matching
   whole templates is steadier at 8-pixel sizes than thresholded features such as fill ratio.

Accuracy against the truth on fresh renders is measured by ``tests/test_judge.py`` and
``python -m t2idemo benchmarks judge``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import ATTRIBUTES, COLORS, SCENES, SHAPES

MIN_AREA = 6.0  # a component needs at least this much alpha mass (pixels) to count as a shape
MIN_CONTRAST = 45.0  # RGB distance from the background below which nothing is there
FRAME = 2  # pixels: the border frame whose median colour is the background
# the foreground's "core", whose median colour is the shape's: the pixels at least CORE_FRACTION of the
# CORE_PERCENTILE-th percentile of the distances from the background away from it
CORE_PERCENTILE = 99
CORE_FRACTION = 0.6
SUPERSAMPLE = 4  # the templates' anti-aliasing: k x k samples per pixel, as world.render draws at 4x
_COLOR_NAMES, _COLOR_RGB = list(COLORS), np.array(list(COLORS.values()), dtype=np.float32)
_SCENE_NAMES, _SCENE_RGB = list(SCENES), np.array(list(SCENES.values()), dtype=np.float32)


def _nearest(rgb: np.ndarray, names: list, palette: np.ndarray) -> str:
    return names[int(np.argmin(((palette - rgb) ** 2).sum(-1)))]


def _coverage(shape: str, cx: float, cy: float, s: float, h: int, w: int, k: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage (H, W) of a shape by k x k supersampling; same geometry as world.render."""
    o = (np.arange(k) + 0.5) / k
    ys = (np.arange(h)[:, None] + o[None, :]).reshape(-1)  # (H*k,) sample rows
    xs = (np.arange(w)[:, None] + o[None, :]).reshape(-1)  # (W*k,) sample columns
    dy, dx = ys[:, None] - cy, xs[None, :] - cx  # (H*k, W*k)
    r = s / 2
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:  # upright triangle: apex at dy = -r, base at dy = +r, half-width grows linearly
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    return inside.reshape(h, k, w, k).mean(axis=(1, 3))


def analyse(image) -> dict:
    """Read count, colour, shape and scene off one image (PIL or uint8 array (H, W, 3))."""
    x = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    h, w, _ = x.shape
    # 1. background from the median of a FRAME-px frame
    f = FRAME
    frame = np.concatenate(
        [x[:f].reshape(-1, 3), x[-f:].reshape(-1, 3), x[f:-f, :f].reshape(-1, 3), x[f:-f, -f:].reshape(-1, 3)]
    )
    bg = np.median(frame, axis=0)
    out = {"scene": _nearest(bg, _SCENE_NAMES, _SCENE_RGB), "count": 0, "color": None, "shape": None}
    # 2. foreground colour from the core pixels
    dist = np.sqrt(((x - bg) ** 2).sum(-1))  # (H, W)
    top = np.percentile(dist, CORE_PERCENTILE)
    if top < MIN_CONTRAST:
        return out
    fg = np.median(x[dist >= CORE_FRACTION * top], axis=0)
    out["color"] = _nearest(fg, _COLOR_NAMES, _COLOR_RGB)
    # 3. alpha by projection onto the background -> shape-colour segment
    d = fg - bg
    alpha = np.clip(((x - bg) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)  # (H, W)
    # 4. connected components of alpha > 0.5 with enough mass
    labels, n = ndimage.label(alpha > 0.5)
    votes = {s: 0 for s in SHAPES}
    count = 0
    for i in range(1, n + 1):
        region = ndimage.binary_dilation(labels == i, iterations=1)  # include the soft edge
        a = np.where(region, alpha, 0.0)
        mass = a.sum()
        if mass < MIN_AREA:
            continue
        count += 1
        # 5. template match: same area, same centroid
        yy, xx = np.mgrid[0:h, 0:w] + 0.5
        cy, cx = (a * yy).sum() / mass, (a * xx).sum() / mass
        errors = {}
        for shape in SHAPES:
            if shape == "circle":
                s = np.sqrt(4 * mass / np.pi)
                t = _coverage(shape, cx, cy, s, h, w)
            elif shape == "square":
                s = np.sqrt(mass)
                t = _coverage(shape, cx, cy, s, h, w)
            else:  # triangle area s^2/2, centroid 1/6 s below the bounding-box centre
                s = np.sqrt(2 * mass)
                t = _coverage(shape, cx, cy - s / 6, s, h, w)
            errors[shape] = np.abs(np.where(region, t, 0.0) - a).sum() + np.abs(np.where(region, 0.0, t)).sum()
        votes[min(errors, key=errors.get)] += 1
    out["count"] = count
    if count:
        out["shape"] = max(SHAPES, key=lambda s: votes[s])
    return out


def judge(image, meta: dict) -> dict:
    """Verdict of one image against a prompt's metadata.

    Returns ``{"pred": {...}, "correct": {attr: bool for every attribute}, "good": bool}`` where ``good``
    means every attribute the prompt names (``meta["named"]``) is right.
    """
    pred = analyse(image)
    correct = {a: meta.get(a) is not None and pred[a] == meta.get(a) for a in ATTRIBUTES}
    good = all(correct[a] for a in meta["named"])
    return {"pred": pred, "correct": correct, "good": good}
