import random

import numpy as np
import pytest

from t2idemo import world


def test_prompt_categories_name_the_right_attributes():
    p, m = world.make_prompt("count", count=2, shape="circle")
    assert p == "two circles" and m["named"] == ["count", "shape"]
    p, m = world.make_prompt("color", color="red", shape="square")
    assert p == "a red square" and m["named"] == ["color", "shape"] and m["count"] == 1
    p, m = world.make_prompt("background", shape="triangle", scene="snow")
    assert p == "a triangle on snow" and m["named"] == ["shape", "scene"]
    p, m = world.make_prompt("combination", count=3, color="purple", shape="circle", scene="grass")
    assert p == "three purple circles on grass"


@pytest.mark.parametrize("prompt, meta", world.all_prompts()[::7])
def test_parse_prompt_inverts_make_prompt(prompt, meta):
    parsed = world.parse_prompt(prompt)
    for key in ("category", "named", "unseen"):
        assert parsed[key] == meta[key]
    for a in meta["named"]:
        assert parsed[a] == meta[a]


def test_bad_input_names_argument_and_allowed_values():
    with pytest.raises(ValueError, match="color='pink'.*red"):
        world.make_prompt("color", color="pink", shape="circle")
    with pytest.raises(ValueError, match="count=7"):
        world.sample_scene(random.Random(0), count=7)
    with pytest.raises(ValueError, match="category='size'"):
        world.make_prompt("size", shape="circle")
    with pytest.raises(ValueError, match="'dog'"):
        world.parse_prompt("a red dog")


def test_unseen_split_is_disjoint_and_covers_every_category():
    seen = {p for p, _ in world.all_prompts(unseen=False)}
    unseen = {p for p, _ in world.all_prompts(unseen=True)}
    assert seen and unseen and not seen & unseen
    for cat in world.CATEGORIES:
        assert world.all_prompts(cat, unseen=True), cat
        assert world.all_prompts(cat, unseen=False), cat
    rng = random.Random(0)
    for _ in range(200):
        _, m = world.random_prompt(rng, unseen=False)
        assert not m["unseen"]


def test_render_is_32px_non_overlapping_in_slots_and_uses_the_palette():
    rng = random.Random(1)
    for _ in range(300):
        sc = world.sample_scene(rng)
        assert len(sc.centers) == sc.count
        slots = [
            min(range(4), key=lambda k: (c[0] - world.SLOTS[k][0]) ** 2 + (c[1] - world.SLOTS[k][1]) ** 2)
            for c in sc.centers
        ]
        assert len(set(slots)) == sc.count  # one shape per slot
        for c, k in zip(sc.centers, slots):  # near its slot's centre, inside the image with a 1 px margin
            assert max(abs(c[0] - world.SLOTS[k][0]), abs(c[1] - world.SLOTS[k][1])) <= world.JITTER
            assert min(c) - sc.size / 2 >= 1.0 and max(c) + sc.size / 2 <= world.IMAGE_SIZE - 1.0
        for i, a in enumerate(sc.centers):  # bounding boxes keep a 2 px gap
            for b in sc.centers[:i]:
                assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= sc.size + 2.0
        x = world.to_array(world.render(sc))[0]
        assert x.shape == (32, 32, 3)
        assert tuple(x[0, 0]) == world.SCENES[sc.scene]  # corner pixel is pure scene colour
        counts = np.unique(x.reshape(-1, 3), axis=0, return_counts=True)
        colours = {tuple(c) for c in counts[0]}
        assert world.COLORS[sc.color] in colours  # interior pixels are pure shape colour
        if sc.shape != "square":  # (a square's edges can fall on the 4x grid)
            assert len(colours) > 2  # anti-aliased edges mix the two


def test_render_prompt_respects_named_and_implied_attributes():
    rng = random.Random(2)
    _, m = world.make_prompt("color", color="blue", shape="triangle")
    for _ in range(20):
        _, sc = world.render_prompt(m, rng)
        assert (sc.color, sc.shape, sc.count) == ("blue", "triangle", 1)


def test_every_unseen_prompt_is_atypical_and_typical_prompts_are_seen():
    for _, m in world.all_prompts(unseen=True):
        assert not world.is_typical(m), m
    typical = world.typical_prompts()
    assert {m["category"] for _, m in typical} == set(world.CATEGORIES)
    assert all(not m["unseen"] for _, m in typical)
    assert "one yellow circle on sky" in [p for p, _ in typical]


def test_the_laion_prior_is_biased_and_often_leaves_the_scene_out():
    rng = random.Random(0)
    laion, balanced = world.get_prior("laion"), world.get_prior("balanced")
    scenes = [laion.sample_scene(rng) for _ in range(3000)]
    typical = np.mean([s.color == world.TYPICAL_COLOR[s.shape] for s in scenes])
    assert 0.88 < typical < 0.94  # 0.9 + 0.1 / 6
    assert 0.97 < np.mean([s.scene == world.TYPICAL_SCENE[s.shape] for s in scenes]) <= 1.0  # 0.98 + 0.02 / 5
    assert 0.57 < np.mean([s.count == 1 for s in scenes]) < 0.63  # most pictures show one shape
    assert all(0.11 < np.mean([s.count == k for s in scenes]) < 0.16 for k in (2, 3, 4))  # 0.4 / 3 each
    caps = [laion.caption(s, rng) for s in scenes]
    assert 0.26 < np.mean([c.split()[0] in ("two", "three", "four", "one") for c in caps]) < 0.34  # seldom counted
    assert 0.45 < np.mean([" on " in c for c in caps]) < 0.55  # the scene is stated half the time
    uniform = [balanced.sample_scene(rng) for _ in range(3000)]
    assert np.mean([s.color == world.TYPICAL_COLOR[s.shape] for s in uniform]) < 0.22
    assert 0.22 < np.mean([s.count == 1 for s in uniform]) < 0.28  # counts uniform
    with pytest.raises(ValueError, match="prior='web'.*laion"):
        world.get_prior("web")


def test_prior_record_round_trips_and_defaults_to_the_first_base(tmp_path):
    assert world.read_prior(str(tmp_path)) == "uniform"  # a pipeline without a record: the first shipped base
    world.write_prior(str(tmp_path), "laion")
    assert world.read_prior(str(tmp_path)) == "laion"
    with pytest.raises(ValueError, match="prior='lion'"):
        world.write_prior(str(tmp_path), "lion")
