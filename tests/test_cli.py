"""The README's main command and the command-line front door."""
import subprocess
import sys

import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "t2idemo", *args], capture_output=True, text=True, timeout=300)


def test_sample_writes_a_grid_from_the_shipped_model(tmp_path):
    out = tmp_path / "grid.png"
    r = run("sample", "--out", str(out), "--per-prompt", "3", "--steps", "4", "--prompts", "two circles|a red square")
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


@pytest.mark.parametrize("command, args, message", [
    ("finetune", ["--data", "nowhere", "--weight", "label"], "data='nowhere' has no metadata.jsonl"),
    ("evaluate", ["--models", "nowhere"], "nowhere"),
])
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
    r = run("run", "--out", str(out), "--max-prompts", "3", "--per-prompt", "2", "--unlabelled-per-prompt", "0",
            "--steps", "2", "--n-combination", "4", "--n-single", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RunConfig" in r.stdout and "| round 1 |" in r.stdout  # the config, then the before/after table
    assert (out / "report" / "report.md").is_file() and (out / "round1" / "aligned" / "model_index.json").is_file()
