"""The judge against the truth on fresh renders (issue bar: >= 99% count/colour/scene, >= 95% shape)."""

import random

import numpy as np
from PIL import ImageFilter

from t2idemo import world
from t2idemo.judge import analyse, judge


def _accuracy(n, seed, corrupt=None):
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    hits = {a: 0 for a in world.ATTRIBUTES}
    for _ in range(n):
        sc = world.sample_scene(rng)
        img = world.render(sc)
        if corrupt:
            img = corrupt(img, nrng)
        pred = analyse(img)
        for a in hits:
            hits[a] += pred[a] == getattr(sc, a)
    return {a: h / n for a, h in hits.items()}


def test_judge_agrees_with_truth_on_1000_fresh_renders():
    acc = _accuracy(1000, seed=123)
    assert acc["count"] >= 0.99 and acc["color"] >= 0.99 and acc["scene"] >= 0.99, acc
    assert acc["shape"] >= 0.95, acc


def test_judge_copes_with_blur_and_noise_like_a_generated_image():
    def corrupt(img, nrng):
        x = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
        x = x + nrng.normal(0, 8, x.shape) + nrng.normal(0, 6, 3)  # pixel noise + a colour cast
        return np.clip(x, 0, 255).astype(np.uint8)

    acc = _accuracy(300, seed=7, corrupt=corrupt)
    assert min(acc["count"], acc["color"], acc["scene"]) >= 0.97, acc
    assert acc["shape"] >= 0.9, acc


def test_verdict_checks_only_named_attributes():
    rng = random.Random(0)
    sc = world.sample_scene(rng, count=3, color="red", shape="square", scene="sky")
    img = world.render(sc)
    _, m = world.make_prompt("count", count=3, shape="square")
    assert judge(img, m)["good"]
    _, m = world.make_prompt("count", count=2, shape="square")
    v = judge(img, m)
    assert not v["good"] and not v["correct"]["count"] and v["correct"]["shape"]
    _, m = world.make_prompt("combination", count=3, color="red", shape="square", scene="snow")
    assert not judge(img, m)["good"]


def test_blank_image_has_no_shapes():
    img = np.full((32, 32, 3), world.SCENES["night"], dtype=np.uint8)
    pred = analyse(img)
    assert pred == {"scene": "night", "count": 0, "color": None, "shape": None}
