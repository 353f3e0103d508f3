"""`python -m t2idemo run`: the whole loop, shrunk to a few prompts and steps (slow: about a minute)."""

import dataclasses
import json
import os

import pytest

from t2idemo import config
from t2idemo.run import run
from t2idemo.runconfig import RoundFolders, RunConfig, RunPaths, changed, preset, round_configs

# the CI size, smaller still: 4 prompts x 2 images, 3 fine-tune steps
SMALL = {
    "generate.max_prompts": 4,
    "generate.per_prompt": 2,
    "unlabelled_per_prompt": 1,
    "finetune.train_steps": 3,
    "evaluate.n_combination": 8,
    "evaluate.n_single": 2,
}


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="rounds=0"):
        RunConfig(rounds=0)
    with pytest.raises(ValueError, match="betas='1,x'"):
        RunConfig(betas="1,x")
    with pytest.raises(ValueError, match="betas="):
        RunConfig(betas="0,1", rounds=2)
    with pytest.raises(ValueError, match="unlabelled_split='nowhere'"):
        RunConfig(unlabelled_split="nowhere")
    with pytest.raises(ValueError, match="evaluate.split='unseen,nowhere'"):
        preset("shapes", **{"evaluate.split": "unseen,nowhere"})
    with pytest.raises(ValueError, match="recipe='rlhf'.*'paper'"):
        preset("shapes", recipe="rlhf")
    with pytest.raises(ValueError, match="finetune.min_reward=-0.1"):
        preset("shapes", **{"finetune.min_reward": -0.1})
    with pytest.raises(ValueError, match="preset='sdxl'"):
        preset("sdxl")
    with pytest.raises(TypeError, match="no field 'lr'"):
        preset("shapes", lr=1e-4)  # a stage's field is "finetune.lr"
    with pytest.raises(ValueError, match="reads only the shapes world"):
        run(preset("sd15-small"))  # the main job needs the judge


def test_presets_are_the_main_jobs_config_and_flags_change_them():
    """ "shapes" is RunConfig's defaults; a preset, then a recipe, then --STAGE.FIELD flags, each on top of the
    last."""
    from t2idemo.run import parse_args
    from t2idemo.runconfig import PRESETS

    assert preset("shapes") == RunConfig()
    small = preset("shapes-small")
    assert (
        small.generate.max_prompts == 12
        and small.finetune.train_steps == 6
        and small.finetune.lr == RunConfig().finetune.lr
    )
    sd = preset("sd15")
    assert (sd.generate.prompt_set, sd.finetune.lora_rank, sd.generate.guidance) == ("sd", 8, 7.5) and not sd.judge
    assert all(preset(name).preset == name for name in PRESETS)
    cfg = parse_args(["--preset", "shapes-small", "--recipe", "dpo", "--finetune.lr", "1e-5", "--labels.flip", "0.2"])
    assert (cfg.preset, cfg.finetune.method, cfg.finetune.lr, cfg.labels.flip) == ("shapes-small", "dpo", 1e-5, 0.2)
    assert cfg.generate.max_prompts == 12  # the preset's, untouched by the flags
    assert changed(cfg, **{"reward.lam": 0}).reward.lam == 0 and cfg.reward.lam == 0.5  # a copy


def _stage_configs(cfg: RunConfig) -> dict:
    """The stage configs a round of ``cfg`` hands to each stage: runconfig.round_configs, as run_round uses it."""
    from t2idemo.runconfig import eval_config

    rnd = round_configs(
        cfg, 1, "M", RoundFolders(feedback="F", reward_data="F", reward="R", unlabelled="U", aligned="O")
    )
    return {
        "generate": rnd.feedback,
        "labels": rnd.labels,
        "reward": rnd.reward,
        "finetune": rnd.finetune[cfg.finetune.beta],
        "evaluate": eval_config(cfg, {"base": "M", "round 1": "O"}, RunPaths("OUT")),
    }


def _other_value(value, name):
    """A valid value different from ``value`` for the field ``name``."""
    choices = {
        "generate.device": "cpu",
        "generate.prompt_set": "sd",
        "reward.device": "cpu",
        "labels.bias": "four-for-three",
        "reward.labels": "judge",
        "reward.clip": "tiny-clip",
        "finetune.weight": "reward",
        "finetune.method": "dpo",
        "finetune.balance": "category",
        "finetune.pretrain_data": "some/folder",
        "finetune.mixed_precision": "bf16",
        "finetune.train": "cross_attention",
        "finetune.save_at": "2",
        "evaluate.split": "seen",
        "evaluate.best_of": "4",
        "finetune.min_reward": 0.25,
        "finetune.t_low": 0.5,
        "finetune.ema": 0.5,
        "finetune.p_uncond": 0.2,
        "reward.dropout": 0.2,
        "reward.noise": 0.2,
        "reward.val_frac": 0.3,
        "labels.flip": 0.1,
        "labels.skip": 0.1,
        "generate.precision": "fp32",
        "evaluate.precision": "fp32",
    }
    if name in choices:
        return choices[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):  # a value inside the field's declared range
        lo, hi = config.field_range(
            next(
                f for f in dataclasses.fields(RunConfig().__dict__[name.split(".")[0]]) if f.name == name.split(".")[1]
            )
        )
        if isinstance(value, int):
            return value + 1 if value + 1 <= hi else value - 1
        return (value + hi) / 2 if hi > value else (value + lo) / 2
    raise AssertionError(f"no test value for {name}")


def test_every_stage_field_is_reachable_from_run_once(capsys):
    """Each stage field is either one `--stage.field` flag of `run --help` that reaches the config the stage is handed,
    or in ROUND_SETS, and then the round sets it (its folders, models and seeds), or in NOT_RUN (options of the reward
    command's eval and study, which the main job does not run)."""
    from t2idemo.run import parse_args
    from t2idemo.runconfig import NOT_RUN, ROUND_SETS

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    listed = [line.split()[0].rstrip(",") for line in capsys.readouterr().out.splitlines() if line.startswith("  --")]
    flags = [f for f in listed if not f.startswith("--no-")]
    assert len(flags) == len(set(flags)), "an option is listed twice"
    base = preset("shapes")
    handed = _stage_configs(base)
    for stage, cfg in handed.items():
        for f in dataclasses.fields(cfg):
            name = f"{stage}.{f.name}"
            if name in ROUND_SETS | NOT_RUN:
                assert f"--{stage}.{f.name.replace('_', '-')}" not in flags
                continue
            assert f"--{stage}.{f.name.replace('_', '-')}" in flags, f"{name} has no run option"
            new = _other_value(getattr(base, stage).__dict__[f.name], name)
            flag = f"--{stage}.{f.name.replace('_', '-')}"
            cfg2 = parse_args([flag] if new is True else [f"--no-{flag[2:]}"] if new is False else [flag, str(new)])
            assert getattr(_stage_configs(cfg2)[stage], f.name) == new, f"--{name} does not reach the {stage} stage"
    # what the round sets: every ROUND_SETS field holds the round's value, not the template's
    assert handed["generate"].out == "F" and handed["generate"].model == "M" and handed["generate"].split == "seen"
    assert (
        handed["labels"].data == "F" and handed["labels"].export == "judge" and handed["labels"].seed == base.seed + 1
    )
    assert (handed["reward"].data, handed["reward"].run) == ("F", "R")
    assert (
        handed["finetune"].data,
        handed["finetune"].out,
        handed["finetune"].reward,
        handed["finetune"].unlabelled,
    ) == ("F", "O", "R", "U")
    assert handed["evaluate"].models == "M,O" and handed["evaluate"].names == "base,round 1"


def test_the_paper_recipe_is_one_flag_away():
    """The default filters D_model; --recipe paper weights every image by r (and the report says which)."""
    from t2idemo.run import parse_args, recipe_line

    default, paper = RunConfig(), parse_args(["--recipe", "paper"])
    assert (default.finetune.top_k, default.finetune.min_reward, default.finetune.weight) == (2, 0.5, "label")
    assert (paper.finetune.top_k, paper.finetune.min_reward, paper.finetune.weight) == (0, 0.0, "reward")
    assert "filtered" in recipe_line(default) and "paper's recipe" in recipe_line(paper)


def test_dpo_is_one_flag_away_with_its_own_learning_rate(tmp_path):
    """--recipe dpo fine-tunes with Diffusion-DPO at its own lr (the reward recipe's lr collapsed it), and says so."""
    from t2idemo.run import parse_args, recipe_line

    dpo = parse_args(["--recipe", "dpo"])
    fcfg = _stage_configs(dpo)["finetune"]
    assert (fcfg.method, fcfg.lr, fcfg.dpo_beta) == ("dpo", 2e-5, 2000.0) and fcfg.lr != RunConfig().finetune.lr
    assert "Diffusion-DPO" in recipe_line(dpo) and "lr 2e-05" in recipe_line(dpo)
    assert _stage_configs(RunConfig())["finetune"].method == "reward"


def test_a_results_file_of_the_older_flat_layout_still_loads():
    from t2idemo.runconfig import from_saved

    old = {
        "out": "runs/x",
        "max_prompts": 4,
        "steps": 300,
        "feedback_guidance": 3.0,
        "flip": 0.2,
        "method": "dpo",
        "lr": 5e-4,
        "dpo_lr": 3e-5,
        "recipe": "filtered",
        "eval_split": "unseen",
    }
    cfg = from_saved(old)
    assert (cfg.generate.max_prompts, cfg.finetune.train_steps, cfg.generate.guidance, cfg.labels.flip) == (
        4,
        300,
        3.0,
        0.2,
    )
    assert (cfg.finetune.method, cfg.finetune.lr, cfg.evaluate.split) == ("dpo", 3e-5, "unseen")
    assert from_saved(dataclasses.asdict(preset("shapes-small"))) == preset("shapes-small")


@pytest.mark.slow
def test_top_k_on_every_prompt(tmp_path):
    out = tmp_path / "run"
    run(
        preset(
            "shapes",
            out=str(out),
            unlabelled_split="all",
            **{**SMALL, "finetune.top_k": 1, "evaluate.n_combination": 2, "evaluate.n_single": 1},
        )
    )
    unl = [json.loads(l) for l in open(out / "round1" / "unlabelled" / "metadata.jsonl")]
    fb = [json.loads(l) for l in open(out / "round1" / "feedback" / "metadata.jsonl")]
    prompts = {r["prompt"] for r in unl + fb}
    tuned = json.load(open(out / "round1" / "aligned" / "finetune.json"))
    assert tuned["config"]["top_k"] == 1 and tuned["mean_weight"] == 1.0
    assert 0 < tuned["n_model"] <= len(prompts)  # one image per prompt at most, each at weight 1


@pytest.mark.slow
def test_two_rounds_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = run(preset("shapes", out=str(out), rounds=2, **SMALL))
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
    assert (
        json.load(open(out / "round2" / "reward" / "reward_config.json"))["training"]["n_train"]
        + json.load(open(out / "round2" / "reward" / "reward_config.json"))["training"]["n_val"]
        == 16
    )
    report = (out / "report" / "report.md").read_text()
    assert "**unseen prompts**" in report and "**seen prompts**" in report  # the paper evaluated both
    assert set(res["models"]["round 2"]["rates"]) == {"unseen", "seen"}
    assert "| round 2 |" in report and os.path.getsize(out / "report" / "bars.png") > 0
    assert "Fine-tune recipe: filtered" in report and res["recipe"] in report
    assert res["timings_s"]["total"] > 0


@pytest.mark.slow
def test_beta_sweep_draws_the_trade_off(tmp_path):
    out = tmp_path / "sweep"
    res = run(preset("shapes", out=str(out), betas="0,1", **SMALL))
    assert list(res["models"]) == ["base", "beta 0", "beta 1"]
    assert all("fid" in m for m in res["models"].values())
    assert os.path.getsize(out / "report" / "tradeoff.png") > 0


def test_train_seed_moves_only_what_learns_from_the_images():
    folders = RunPaths("runs/x").round(1)
    same = round_configs(preset("shapes", seed=3), 1, "m", folders)
    assert round_configs(preset("shapes", seed=3, train_seed=3), 1, "m", folders) == same
    other = round_configs(preset("shapes", seed=3, train_seed=7), 1, "m", folders)
    assert (other.feedback, other.unlabelled) == (same.feedback, same.unlabelled)  # the same images
    assert (other.labels.seed, other.reward.seed, other.finetune[1.0].seed) == (8, 7, 8)
    assert (same.labels.seed, same.reward.seed, same.finetune[1.0].seed) == (4, 3, 4)


def test_reuse_relabels_the_same_images(tmp_path):
    first = tmp_path / "first"
    run(preset("shapes", out=str(first), **SMALL))
    again = tmp_path / "again"
    run(
        preset(
            "shapes",
            out=str(again),
            reuse=str(first),
            train_seed=5,
            **{**SMALL, "labels.flip": 1.0, "finetune.min_reward": 0.0},
        )
    )
    for name in ("feedback", "unlabelled"):
        a, b = first / "round1" / name, again / "round1" / name
        pngs = sorted(p.name for p in a.glob("*.png"))
        assert pngs and pngs == sorted(p.name for p in b.glob("*.png"))
        assert all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs)  # copied, not drawn again
    rows_a = [json.loads(l) for l in open(first / "round1" / "feedback" / "metadata.jsonl")]
    rows_b = [json.loads(l) for l in open(again / "round1" / "feedback" / "metadata.jsonl")]
    assert [r["label"] for r in rows_b] == [
        {"good": "bad", "bad": "good"}[r["label"]] for r in rows_a
    ]  # every one flipped
    assert json.load(open(again / "round1" / "aligned" / "finetune.json"))["config"]["seed"] == 6
    # the same base at the same evaluation settings: its evaluation is RUN's, read (tests/test_evaluate.py: exact)
    base_a, base_b = (json.load(open(r / "report" / "results.json"))["models"]["base"] for r in (first, again))
    assert base_a == base_b and base_b["digest"]
    # settings that would draw other images refuse the copies
    with pytest.raises(ValueError, match="other settings"):
        run(preset("shapes", out=str(tmp_path / "third"), reuse=str(first), **{**SMALL, "generate.guidance": 4.0}))
    with pytest.raises(ValueError, match="reuse='nowhere' has no round-1 feedback images"):
        run(preset("shapes", out=str(tmp_path / "fourth"), reuse="nowhere", **SMALL))


def test_shipped_copy_keeps_no_path_of_this_machine(tmp_path):
    """run.portable: a shipped folder's config.json files lose the absolute `_name_or_path` diffusers wrote, and
    finetune.json's folders inside the repository become relative to it (others are left as they were)."""
    from t2idemo.run import portable

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(
        '{\n  "_class_name": "UNet2DConditionModel",\n'
        f'  "_name_or_path": "{root}/t2idemo/assets/tiny-sd/unet",\n'
        '  "in_channels": 4\n}\n'
    )
    (tmp_path / "finetune.json").write_text(
        json.dumps(
            {
                "config": {
                    "model": f"{root}/t2idemo/assets/tiny-sd",
                    "data": "/elsewhere/feedback",
                    "out": "runs/x",
                    "lr": 5e-4,
                }
            }
        )
    )
    portable(str(tmp_path))
    unet = (tmp_path / "unet" / "config.json").read_text()
    assert "_name_or_path" not in unet and json.loads(unet) == {
        "_class_name": "UNet2DConditionModel",
        "in_channels": 4,
    }
    saved = json.loads((tmp_path / "finetune.json").read_text())["config"]
    assert saved == {
        "model": os.path.join("t2idemo", "assets", "tiny-sd"),
        "data": "/elsewhere/feedback",
        "out": "runs/x",
        "lr": 5e-4,
    }
