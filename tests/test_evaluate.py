"""Stage 3 evaluation: the prompt set, the tallies, the FID and a tiny end-to-end report."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from t2idemo import evaluate as ev
from t2idemo import world
from t2idemo.data import pipeline_digest
from t2idemo.eval_config import EvalConfig
from t2idemo.generate import BASE_MODEL


def test_eval_prompts_split_and_sizes():
    metas = ev.eval_prompts("unseen", n_combination=20, n_single=6, seed=0)
    assert len(metas) == 20 + 3 * 6
    assert all(m["unseen"] and m["split"] == "unseen" for m in metas)
    assert sum(m["category"] == "combination" for m in metas) == 20
    # the few unseen count prompts (2) are cycled evenly
    counts = [m["prompt"] for m in metas if m["category"] == "count"]
    assert len(set(counts)) == 2 and counts.count(counts[0]) == 3
    both = ev.eval_prompts("all", 10, 4, seed=0)
    assert {m["split"] for m in both} == {"seen", "unseen"} and len(both) == 2 * (10 + 12)
    assert not any(m["unseen"] for m in both if m["split"] == "seen")
    # adding a split leaves the first split's prompts (and so its seeds) where they were
    assert ev.eval_prompts("unseen,seen,typical", 20, 6, 0)[: len(metas)] == metas
    typical = [m for m in ev.eval_prompts("typical", 20, 6, 0)]
    assert len(typical) == 4 * 6 and all(world.is_typical(m) and m["split"] == "typical" for m in typical)
    # fixed order for a seed; another seed shuffles differently
    assert ev.eval_prompts("unseen", 20, 6, 0) == metas
    assert [m["prompt"] for m in ev.eval_prompts("unseen", 20, 6, 1)] != [m["prompt"] for m in metas]


def test_tally_counts_named_attributes_only():
    _, m1 = world.make_prompt("combination", count=2, color="red", shape="circle", scene="sky")
    _, m2 = world.make_prompt("color", count=1, color="blue", shape="square", scene=None)
    metas = [{**m1, "split": "seen"}, {**m2, "split": "seen"}]
    verdicts = [
        {"good": False, "correct": {"count": False, "color": True, "shape": True, "scene": True}},
        {"good": True, "correct": {"count": True, "color": True, "shape": True, "scene": False}},
    ]
    t = ev.tally(verdicts, metas)["seen"]
    assert t["combination"]["good"] == 0 and t["combination"]["attr"]["count"] == (0, 1)
    assert t["color"]["good"] == 1 and "scene" not in t["color"]["attr"]  # unnamed attributes are not scored
    r = ev.summarise({"seen": t})["seen"]["combination"]["color"]
    assert r["p"] == 1.0 and r["lo"] < 1.0 and r["hi"] == 1.0


def test_tally_counts_three_drawn_as_four():
    metas = [
        {**world.make_prompt("combination", count=c, color="red", shape="circle", scene="sky")[1], "split": "unseen"}
        for c in (3, 3, 3, 2)
    ]
    verdicts = [
        {
            "good": False,
            "pred": {"count": n},
            "correct": {"count": n == c, "color": True, "shape": True, "scene": True},
        }
        for n, c in ((4, 3), (3, 3), (2, 3), (4, 2))
    ]
    t = ev.tally(verdicts, metas)["unseen"]["combination"]
    assert t["three_as_four"] == (1, 3)  # asked for three: one drawn as four; the two asked as two is not counted
    assert ev.summarise({"unseen": {"combination": t}})["unseen"]["combination"]["three_as_four"]["k"] == 1


def test_fid_is_zero_on_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert ev.fid(a, a) == pytest.approx(0.0, abs=1e-6)
    near, far = ev.fid(a, b), ev.fid(a, b + 1.0)
    assert near < 0.5 and far > 7.0  # a unit shift in 8 dimensions adds 8


def test_fid_of_renders_is_below_fid_of_noise():
    metas = ev.eval_prompts("seen", 64, 1, seed=0)[:64]
    ref = ev.clip_features(ev.renders(metas, 0))
    same = ev.clip_features(ev.renders(metas, 1))
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in metas]
    assert ev.fid(same, ref) < ev.fid(ev.clip_features(noise), ref) / 10


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="split='both'"):
        EvalConfig(split="both")
    with pytest.raises(ValueError, match="best_of='4,x'"):
        EvalConfig(best_of="4,x")
    with pytest.raises(ValueError, match="names="):
        EvalConfig(models="a,b", names="one")


def test_evaluate_writes_a_report(tmp_path):
    out = tmp_path / "report"
    cfg = EvalConfig(
        models=f"{BASE_MODEL},{BASE_MODEL}",
        names="base,same",
        split="unseen",
        n_combination=8,
        n_single=4,
        sample_steps=4,
        out=str(out),
    )
    res = ev.evaluate(cfg)
    for f in ("report.md", "results.json", "bars.png", "samples.png"):
        assert os.path.getsize(out / f) > 0
    base, same = res["models"]["base"], res["models"]["same"]
    assert base["rates"] == same["rates"] and base["fid"] == pytest.approx(same["fid"])  # same model, same seeds
    assert base["rates"]["unseen"]["combination"]["all"]["n"] == 8
    assert json.load(open(out / "results.json"))["n_images"] == 8 + 3 * 4
    assert "| base |" in (out / "report.md").read_text()


def test_a_known_evaluation_is_read_not_drawn_again(tmp_path, monkeypatch):
    both = EvalConfig(
        models=BASE_MODEL,
        split="unseen,seen",
        n_combination=8,
        n_single=4,
        sample_steps=4,
        best_of="",
        out=str(tmp_path / "both"),
    )
    saved = ev.evaluate(both, write=False)
    unseen = dataclasses.replace(both, split="unseen", out=str(tmp_path / "unseen"))
    fresh = ev.evaluate(unseen, write=False)["models"]["base"]
    known = ev.reusable(saved, unseen)
    assert list(known) == [pipeline_digest(BASE_MODEL)] == [fresh["digest"]]
    monkeypatch.setattr(ev, "evaluate_model", lambda *a: pytest.fail("a known model was drawn again"))
    read = ev.evaluate(unseen, write=False, known=known)["models"]["base"]
    assert read["rates"] == fresh["rates"] and read["fid"] == pytest.approx(
        fresh["fid"]
    )  # the numbers a fresh evaluation gives
    assert os.path.getsize(tmp_path / "unseen" / "samples.png") > 0  # its sample grid is still drawn
    # other settings, or a split that is not the first of the saved ones: nothing is known
    for other in (dict(seed=1), dict(sample_steps=5), dict(n_single=3), dict(fid=False), dict(split="seen")):
        assert ev.reusable(saved, dataclasses.replace(unseen, **other)) == {}


def test_a_pipeline_digest_changes_with_its_weights(tmp_path):
    copy = shutil.copytree(BASE_MODEL, tmp_path / "copy")
    assert pipeline_digest(str(copy)) == pipeline_digest(BASE_MODEL) != ""
    (copy / "checkpoint").mkdir()  # a fine-tune's checkpoint: from_pretrained does not read it
    (copy / "checkpoint" / "state.json").write_text("{}")
    assert pipeline_digest(str(copy)) == pipeline_digest(BASE_MODEL)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert pipeline_digest(str(copy)) != pipeline_digest(BASE_MODEL)
    assert (
        pipeline_digest("org/model") == pipeline_digest(str(tmp_path)) == ""
    )  # a hub id, a folder without a pipeline


def test_wilson_interval_always_contains_p():
    from t2idemo.stats import wilson

    for n in range(1, 701):
        for k in (0, n // 3, n):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
