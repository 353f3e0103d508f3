"""ruff, as diffusers uses it: the lint rules and the format (line length 119) written in pyproject.toml's
[tool.ruff], over t2idemo/, app.py, scripts/ and tests/. Fix with ``ruff check --fix . && ruff format .``."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["t2idemo", "app.py", "scripts", "tests"]


def ruff() -> str:
    path = shutil.which("ruff")
    if path is None:
        pytest.fail("ruff is not installed: pip install ruff (the README's test command installs it)")
    return path


def test_ruff_check_passes():
    done = subprocess.run([ruff(), "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_format_leaves_every_file_as_it_is():
    done = subprocess.run([ruff(), "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout[-4000:]
