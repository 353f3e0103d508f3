"""`python -m t2idemo run`: the whole loop, shrunk to a few prompts and steps (slow: about a minute)."""

import json
import os

import pytest

from t2idemo.run import RunConfig, run

SMALL = dict(max_prompts=4, per_prompt=2, unlabelled_per_prompt=1, steps=3, n_combination=8, n_single=2)


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="rounds=0"):
        RunConfig(rounds=0)
    with pytest.raises(ValueError, match="betas='1,x'"):
        RunConfig(betas="1,x")
    with pytest.raises(ValueError, match="betas="):
        RunConfig(betas="0,1", rounds=2)
    with pytest.raises(ValueError, match="unlabelled_split='nowhere'"):
        RunConfig(unlabelled_split="nowhere")
    with pytest.raises(ValueError, match="split='unseen,nowhere'"):
        RunConfig(eval_split="unseen,nowhere")
    with pytest.raises(ValueError, match="recipe='rlhf'.*'paper'"):
        RunConfig(recipe="rlhf")
    with pytest.raises(ValueError, match="min_reward=-0.1"):
        RunConfig(min_reward=-0.1)


def test_the_paper_recipe_is_one_flag_away():
    """The default filters D_model; --recipe paper weights every image by r (and the report says which)."""
    from t2idemo.run import parse_args, recipe_line

    default, paper = RunConfig(), parse_args(["--recipe", "paper"])
    assert (default.top_k, default.min_reward, default.weight) == (2, 0.5, "label")
    assert (paper.top_k, paper.min_reward, paper.weight) == (0, 0.0, "reward")
    assert "filtered" in recipe_line(default) and "paper's recipe" in recipe_line(paper)


def test_dpo_is_one_flag_away_with_its_own_learning_rate(tmp_path):
    """--method dpo fine-tunes with Diffusion-DPO at dpo_lr (the reward recipe's lr collapsed it), and says so."""
    from t2idemo.run import finetune_config, parse_args, recipe_line

    dpo = parse_args(["--method", "dpo"])
    fcfg = finetune_config(dpo, data="d", out="o", model="m", reward="r", unlabelled="", beta=1.0, seed=0)
    assert (fcfg.method, fcfg.lr, fcfg.dpo_beta) == ("dpo", dpo.dpo_lr, 2000.0) and dpo.dpo_lr != dpo.lr
    assert "Diffusion-DPO" in recipe_line(dpo) and f"lr {dpo.dpo_lr:g}" in recipe_line(dpo)
    assert finetune_config(RunConfig(), "d", "o", "m", "r", "", 1.0, 0).method == "reward"


@pytest.mark.slow
def test_top_k_on_every_prompt(tmp_path):
    out = tmp_path / "run"
    run(RunConfig(out=str(out), top_k=1, unlabelled_split="all", **{**SMALL, "n_combination": 2, "n_single": 1}))
    unl = [json.loads(l) for l in open(out / "round1" / "unlabelled" / "metadata.jsonl")]
    fb = [json.loads(l) for l in open(out / "round1" / "feedback" / "metadata.jsonl")]
    prompts = {r["prompt"] for r in unl + fb}
    tuned = json.load(open(out / "round1" / "aligned" / "finetune.json"))
    assert tuned["config"]["top_k"] == 1 and tuned["mean_weight"] == 1.0
    assert 0 < tuned["n_model"] <= len(prompts)  # one image per prompt at most, each at weight 1


@pytest.mark.slow
def test_two_rounds_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = run(RunConfig(out=str(out), rounds=2, **SMALL))
    assert list(res["models"]) == ["base", "round 1", "round 2"]
    for r in (1, 2):
        d = out / f"round{r}"
        rows = [json.loads(l) for l in open(d / "feedback" / "metadata.jsonl")]
        assert len(rows) == 8 and all(row["label"] in ("good", "bad") for row in rows)
        assert (d / "reward" / "head.safetensors").is_file()
        assert (d / "aligned" / "model_index.json").is_file()
    # round 2 starts from round 1's model and its reward model sees both rounds' labels
    rows2 = [json.loads(l) for l in open(out / "round2" / "feedback" / "metadata.jsonl")]
    assert rows2[0]["model"] == str(out / "round1" / "aligned")
    assert json.load(open(out / "round2" / "reward" / "reward_config.json"))["training"]["n_train"] + \
        json.load(open(out / "round2" / "reward" / "reward_config.json"))["training"]["n_val"] == 16
    report = (out / "report" / "report.md").read_text()
    assert "**unseen prompts**" in report and "**seen prompts**" in report  # the paper evaluated both
    assert set(res["models"]["round 2"]["rates"]) == {"unseen", "seen"}
    assert "| round 2 |" in report and os.path.getsize(out / "report" / "bars.png") > 0
    assert "Fine-tune recipe: filtered" in report and res["recipe"] in report
    assert res["timings_s"]["total"] > 0


@pytest.mark.slow
def test_beta_sweep_draws_the_trade_off(tmp_path):
    out = tmp_path / "sweep"
    res = run(RunConfig(out=str(out), betas="0,1", **SMALL))
    assert list(res["models"]) == ["base", "beta 0", "beta 1"]
    assert all("fid" in m for m in res["models"].values())
    assert os.path.getsize(out / "report" / "tradeoff.png") > 0
