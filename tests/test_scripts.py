"""The study scripts' tables (scripts/dpo_sweep.py, scripts/rater_noise.py) from results of the shape `run` writes."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rate(k, n):
    from t2idemo.stats import wilson

    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "p": k / n, "lo": lo, "hi": hi}


def results(combos: int, lr: float, seconds: float) -> dict:
    """A run's results.json as `run` writes it: the base and one tuned model, unseen rates."""

    def rates(k):
        return {
            "unseen": {
                "count": {"count": rate(k // 4, 192), "three_as_four": rate(k // 20, 96)},
                "color": {"color": rate(k // 4, 192)},
                "background": {"scene": rate(k // 4, 192)},
                "combination": {a: rate(k, 512) for a in ("all", "count", "color", "shape", "scene")},
            }
        }

    return {
        "models": {"base": {"rates": rates(160), "fid": 5.0}, "round 1": {"rates": rates(combos), "fid": 4.0}},
        "run_config": {"finetune": {"lr": lr}, "seed": 0},
        "timings_s": {"round1": {"finetune_beta1": seconds}},
    }


def test_dpo_sweep_table_puts_every_rate_beside_the_filtered_recipe():
    t = script("dpo_sweep").table({"filtered": results(300, 5e-4, 380.0), "DPO, lr 2e-5": results(200, 2e-5, 615.0)})
    lines = [l for l in t.splitlines() if l.startswith("| ")]
    assert [l.split(" | ")[0] for l in lines[1:]] == ["| base", "| filtered, lr 5e-4", "| DPO, lr 2e-5"]
    assert "58.6" in lines[2] and "39.1" in lines[3]  # 300 and 200 of 512
    assert "filtered: 380 s; DPO, lr 2e-5: 615 s" in t


def test_rater_noise_table_gives_the_mean_and_spread_over_seeds():
    rn = script("rater_noise")
    rows = [
        {
            "level": "0.2",
            "base": rate(160, 512),
            "seeds": [
                {
                    "seed": s,
                    "combos": c,
                    "count": 70.0,
                    "colour": 80.0,
                    "background": 90.0,
                    "three_as_four": f,
                    "auc": a,
                    "changed": n,
                }
                for s, c, f, a, n in (
                    (0, 50.0, 10.0, 0.90, 190),
                    (1, 40.0, 30.0, 0.80, 200),
                    (2, 45.0, 20.0, 0.85, 195),
                )
            ],
            "base_three_as_four": 42.4,
        }
    ]
    t = rn.table(rows)
    assert (
        "| 20% flipped | 3 | 195 (190 - 200) | 45.0 (40.0 - 50.0) | 50.0, 40.0, 45.0 | 70.0 (70.0 - 70.0) | "
        "80.0 (80.0 - 80.0) | "
        "90.0 (90.0 - 90.0) | 20.0 (10.0 - 30.0) | 0.850 (0.800 - 0.900) |" in t
    )
    assert "The base: combinations 31.2 [" in t and "three drawn as four 42.4." in t


def test_rater_noise_pools_three_as_four_over_count_and_combination_prompts():
    rates = {
        "count": {"all": rate(50, 192), "three_as_four": rate(10, 96)},
        "combination": {"all": rate(200, 512), "three_as_four": rate(20, 175)},
        "color": {"all": rate(1, 2)},
    }
    assert script("rater_noise").three_as_four(rates) == pytest.approx(100 * 30 / 271)


def test_rater_noise_refuses_a_level_it_cannot_run(capsys):
    with pytest.raises(SystemExit):
        script("rater_noise").main(["runs/x", "--levels", "0,1.5"])
    assert (
        "--levels='0,1.5': '1.5' is neither a share in 0 - 1 nor one of ('four-for-three',)" in capsys.readouterr().err
    )
