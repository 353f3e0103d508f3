"""The README's main command and the command-line front door."""

import subprocess
import sys

import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "t2idemo", *args], capture_output=True, text=True, timeout=300)


def test_sample_writes_a_grid_from_the_shipped_model(tmp_path):
    out = tmp_path / "grid.png"
    r = run(
        "sample",
        "--out",
        str(out),
        "--per-prompt",
        "3",
        "--sample-steps",
        "4",
        "--prompts",
        "two circles|a red square",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SampleConfig" in r.stdout  # the resolved config is printed
    assert Image.open(out).size == (3 * 32 * 4, 2 * 32 * 4)


def test_unknown_command_and_bad_values_fail_clearly(tmp_path):
    r = run("bogus")
    assert r.returncode == 2 and "unknown command 'bogus'" in r.stderr
    r = run("sample", "--out", str(tmp_path / "g.png"), "--per-prompt", "0")
    assert r.returncode != 0 and "per_prompt=0" in r.stderr
    r = run("sample", "--out", str(tmp_path / "g.png"), "--prompts", "a red dog", "--per-prompt", "1")
    assert r.returncode != 0 and "'dog'" in r.stderr


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("finetune", ["--data", "nowhere", "--weight", "label"], "data='nowhere' has no metadata.jsonl"),
        ("evaluate", ["--models", "nowhere"], "nowhere"),
    ],
)
def test_bad_input_found_late_is_one_line_without_a_traceback(tmp_path, command, args, message):
    r = run(command, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert f"python -m t2idemo {command}: error:" in r.stderr


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0 and "sample" in r.stdout and "pretrain" in r.stdout


@pytest.mark.slow
def test_main_command_runs_end_to_end_shrunk(tmp_path):
    """The README's main command, `python -m t2idemo run`, with every size shrunk."""
    out = tmp_path / "run"
    r = run(
        "run",
        "--out",
        str(out),
        "--preset",
        "shapes-small",
        "--generate.max-prompts",
        "3",
        "--generate.per-prompt",
        "2",
        "--unlabelled-per-prompt",
        "0",
        "--finetune.train-steps",
        "2",
        "--evaluate.n-combination",
        "4",
        "--evaluate.n-single",
        "1",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RunConfig" in r.stdout and "| round 1 |" in r.stdout  # the config, then the before/after table
    assert (out / "report" / "report.md").is_file() and (out / "round1" / "aligned" / "model_index.json").is_file()


# one bad value per command: (command line, what the one error line must name)
BAD_VALUES = [
    (["sample", "--per-prompt", "0"], "per_prompt=0"),
    (["pretrain", "--part", "everything"], "part='everything'"),
    (["reward", "train", "--lam", "-1"], "lam=-1.0"),
    (["generate", "--per-prompt", "0"], "per_prompt=0"),
    (["finetune", "--weight", "label", "--beta", "-1"], "beta=-1.0"),
    (["label", "--flip", "1.5"], "flip=1.5"),
    (["evaluate", "--split", "everywhere"], "everywhere"),
    (["push", "--repo-id", "no slash"], "repo_id='no slash'"),
    (["run", "--rounds", "9"], "rounds=9"),
    (["overopt", "--betas", "500"], "betas='500'"),
    (["run", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["finetune", "--train-steps", "many"], "argument --train-steps: invalid int value: 'many'"),
    (["benchmarks", "app", "--runs", "0"], "--runs 0 is out of range"),
    (["sd", "tiny", "--image-size", "12"], "image_size=12 is out of range"),
    (["strip", "/nowhere.ipynb"], "notebook='/nowhere.ipynb' is not a file"),
    (["space", "--repo-id", "a/b", "--torch", "latest"], "torch='latest' is not a release number"),
    (["colab", "--write"], "unrecognized arguments: --write"),
]


def test_every_command_is_in_the_bad_value_list():
    from t2idemo.__main__ import COMMANDS

    assert {argv[0] for argv, _ in BAD_VALUES} == set(COMMANDS)


@pytest.mark.parametrize("argv, names", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_it_with_status_2(argv, names, capsys):
    """The same style for every command: PROG: error: <argument, value, what is allowed>, exit 2, no traceback."""
    from t2idemo.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and names in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"python -m t2idemo {argv[0]}"), err
