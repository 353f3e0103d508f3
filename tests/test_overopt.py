"""The over-optimisation curve: checkpoints of one fine-tune per beta, each scored by the proxy and the judge
(slow)."""

import json
import os

import pytest

from t2idemo.overopt import OveroptConfig, overoptimisation
from t2idemo.run import run
from t2idemo.runconfig import preset

SMALL = {
    "generate.max_prompts": 4,
    "generate.per_prompt": 2,
    "unlabelled_per_prompt": 1,
    "finetune.train_steps": 3,
    "evaluate.n_combination": 8,
    "evaluate.n_single": 2,
}


@pytest.mark.slow
def test_curve_scores_every_checkpoint_of_both_betas(tmp_path):
    out = tmp_path / "run"
    run(preset("shapes", out=str(out), **SMALL))
    res = overoptimisation(OveroptConfig(run=str(out), train_steps="0,1,3", betas="1,0", n_combination=16, n_single=8))
    pts = {p["name"]: p for p in res["points"]}
    assert list(pts) == [f"beta {b}, step {s}" for b in (1, 0) for s in (0, 1, 3)]
    assert os.path.isdir(out / "overopt" / "beta1" / "step1") and os.path.isdir(out / "overopt" / "beta0" / "step1")
    # step 0 is the base for both betas, scored once; each point has proxy, truth and FID on both splits
    assert pts["beta 1, step 0"]["scores"] == pts["beta 0, step 0"]["scores"]
    for p in res["points"]:
        for sp in ("unseen", "seen"):
            s = p["scores"][sp]
            assert 0 <= s["combination"]["reward"] <= 1 and s["combination"]["judge"]["n"] == 16
            assert s["count"]["judge"]["n"] == 8 and s["fid"] > 0
    assert os.path.getsize(out / "overopt" / "overoptimisation.png") > 0
    assert "| beta 0, step 3 |" in (out / "overopt" / "overopt.md").read_text()
    # a re-run reuses the fine-tunes and the scores
    cached = json.load(open(out / "overopt" / "scores.json"))
    assert len(next(iter(cached.values()))) == 5  # the base and two checkpoints per beta
    again = overoptimisation(
        OveroptConfig(run=str(out), train_steps="0,1,3", betas="1,0", n_combination=16, n_single=8)
    )
    assert again["points"] == res["points"]


def test_config_errors_name_the_argument(tmp_path):
    for kwargs, word in (
        (dict(train_steps="0,x"), "train_steps"),
        (dict(betas="500"), "betas"),
        (dict(n_combination=0), "n_combination"),
        (dict(split="typical"), "split"),
    ):
        with pytest.raises(ValueError, match=word):
            OveroptConfig(**kwargs)
    with pytest.raises(ValueError, match="results.json"):
        overoptimisation(OveroptConfig(run=str(tmp_path), train_steps="0"))
