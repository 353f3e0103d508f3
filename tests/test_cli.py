"""The README's main command and the command-line front door."""
import subprocess
import sys

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


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0 and "sample" in r.stdout and "pretrain" in r.stdout
