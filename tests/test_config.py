"""Every config field's range is declared and checked before work starts; flags are exact; messages name real flags."""

import ast
import contextlib
import dataclasses
import glob
import io
import os
import re

import pytest

from t2idemo import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_configs() -> dict:
    """{name: a valid instance} of every @dataclass config a command line or a notebook builds."""
    import t2idemo.eval_config as eval_config
    import t2idemo.finetune as finetune
    import t2idemo.generate as generate
    import t2idemo.labels as labels
    import t2idemo.loop as loop
    import t2idemo.overopt as overopt
    import t2idemo.pretrain as pretrain
    import t2idemo.reward as reward
    import t2idemo.runconfig as runconfig
    import t2idemo.sd as sd

    return {
        "GenerateConfig": generate.GenerateConfig(),
        "SampleConfig": generate.SampleConfig(),
        "LabelConfig": labels.LabelConfig(),
        "RewardConfig": reward.RewardConfig(),
        "FinetuneConfig": finetune.FinetuneConfig(weight="label"),
        "EvalConfig": eval_config.EvalConfig(),
        "PretrainConfig": pretrain.PretrainConfig(),
        "TinyConfig": sd.TinyConfig(),
        "OveroptConfig": overopt.OveroptConfig(),
        "LoopConfig": loop.LoopConfig(),
        "RunConfig": runconfig.RunConfig(),
    }


def numeric_fields(cfg) -> list:
    return [
        f
        for f in dataclasses.fields(cfg)
        if isinstance(getattr(cfg, f.name), (int, float)) and not isinstance(getattr(cfg, f.name), bool)
    ]


def test_every_numeric_field_declares_its_range_and_its_default_is_inside():
    missing = [
        f"{name}.{f.name}"
        for name, cfg in stage_configs().items()
        for f in numeric_fields(cfg)
        if config.field_range(f) is None
    ]
    assert not missing, f"declare a range with config.ranged(default, lo, hi) for {missing}"
    for name, cfg in stage_configs().items():
        for f in numeric_fields(cfg):
            lo, hi = config.field_range(f)
            assert lo <= f.default <= hi, f"{name}.{f.name}: default {f.default} outside [{lo}, {hi}]"


def out_of_range(f) -> list:
    """A value just below and one above the field's range (an integer field also gets a fraction)."""
    lo, hi = config.field_range(f)
    integer = isinstance(f.default, int)
    values = [lo - 1, hi + 1] if integer else [lo - max(abs(lo) * 0.5, 1e-12), hi + max(abs(hi) * 0.5, 1e-6)]
    return values + ([lo + 0.5] if integer else [])


def test_every_out_of_range_value_stops_the_config_with_a_one_line_error():
    """Walk every numeric field of every config: a value outside its range raises the one-line error naming it."""
    checked = 0
    for _name, cfg in stage_configs().items():
        for f in numeric_fields(cfg):
            for bad in out_of_range(f):
                with pytest.raises(
                    ValueError, match=rf"^{f.name}={re.escape(repr(bad))} is out of range; use .* from "
                ):
                    dataclasses.replace(cfg, **{f.name: bad})
                checked += 1
    assert checked > 150


def test_the_main_jobs_flags_are_checked_before_any_work(capsys):
    """`run --finetune.lr -1` stops at parse time, naming the stage's field; abbreviations are not accepted."""
    from t2idemo.run import parse_args

    for argv, expected in (
        (["--finetune.lr", "-1"], "finetune.lr=-1.0 is out of range"),
        (["--evaluate.n-single", "0"], "evaluate.n_single=0 is out of range"),
        (["--beta", "0.25"], "unrecognized arguments: --beta 0.25"),
        (["--round", "2"], "unrecognized arguments: --round 2"),
    ):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_a_round_set_field_is_none_until_the_round_sets_it_and_a_stage_refuses_none():
    from t2idemo.generate import generate_dataset
    from t2idemo.runconfig import ROUND_SETS, RunPaths, changed, preset, round_configs

    cfg = preset("shapes")
    assert cfg.generate.out is None and cfg.finetune.reward is None and cfg.evaluate.models is None
    with pytest.raises(ValueError, match=r"^GenerateConfig.out is None: pass out=\.\.\."):
        generate_dataset(cfg.generate)
    rnd = round_configs(cfg, 2, "M", RunPaths("OUT").round(2))
    assert rnd.feedback.out == os.path.join("OUT", "round2", "feedback") and rnd.reward.data.endswith("reward_data")
    assert all(
        v is not None
        for c in (rnd.feedback, rnd.labels, rnd.reward, rnd.unlabelled, *rnd.finetune.values())
        for v in dataclasses.asdict(c).values()
    )
    with pytest.raises(ValueError, match="finetune.out is set by each round"):
        changed(cfg, **{"finetune.out": "x"})
    from t2idemo.runconfig import PRESETS, RECIPES

    assert not [k for d in (*PRESETS.values(), *RECIPES.values()) for k in d if k in ROUND_SETS]


# ----------------------------------------------------------------------------- flags named in messages exist
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_.-]*[a-z0-9]")


def command_flags() -> dict:
    """{command: the flags its --help lists}, for every `python -m t2idemo` command, app.py and the scripts."""
    from t2idemo.__main__ import COMMANDS, main

    flags = {}
    for cmd in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([cmd, "--help"])
        flags[cmd] = set(FLAG.findall(out.getvalue()))
    for path in ["app.py", *glob.glob(os.path.join(ROOT, "scripts", "*.py"))]:
        src = open(os.path.join(ROOT, path), encoding="utf-8").read()
        flags[os.path.basename(path)] = set(re.findall(r"add_argument\(\s*\"(--[a-z][\w.-]*)\"", src))
    import app

    flags["app.py"] |= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(app.AppConfig)}
    return flags


def messages(path: str) -> list:
    """The string constants of a file that are not docstrings and not the flag of an add_argument call."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node) is not None:
            skip.add(id(node.body[0].value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            skip |= {id(a) for a in node.args}
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


OTHER_TOOLS_FLAGS = {"--extra-index-url"}  # pip's: space.py writes it into the Space's requirements.txt


def test_every_flag_a_message_names_exists():
    """A flag in a message or help text is one that some command takes; after `python -m t2idemo CMD`, one that CMD
    takes (a message that says `raise --tune-steps` while the flag is --train-steps fails here)."""
    flags = command_flags()
    known = set().union(*flags.values()) | {"--help"} | OTHER_TOOLS_FLAGS
    files = [
        *glob.glob(os.path.join(ROOT, "t2idemo", "*.py")),
        os.path.join(ROOT, "app.py"),
        *glob.glob(os.path.join(ROOT, "scripts", "*.py")),
    ]
    bad = []
    for path in files:
        for text in messages(path):
            for flag in FLAG.findall(text):
                bare = "--" + flag[5:] if flag.startswith("--no-") else flag
                if flag not in known and bare not in known:
                    bad.append(f"{os.path.relpath(path, ROOT)}: {flag} ({text[:60]!r})")
            for cmd, rest in re.findall(r"python -m t2idemo (\w+)([^`\"'\n]*)", text):
                for flag in FLAG.findall(rest):
                    if cmd in flags and flag not in flags[cmd] | {"--help"}:
                        bad.append(f"{os.path.relpath(path, ROOT)}: `python -m t2idemo {cmd}` has no {flag}")
    assert not bad, "messages name flags that do not exist:\n" + "\n".join(bad)
