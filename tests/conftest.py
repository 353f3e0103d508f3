"""Shared helpers for the feedback-stage tests: a small dataset of true renders (no diffusion model needed)."""

import json
import os
import random
import sys

import pytest

# No test may reach a model hub: everything loads from the repo or from tiny configs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_render_dataset(out, n_prompts=3, per_prompt=2):
    """A dataset folder in generate's layout whose images are world renders of their prompts."""
    from t2idemo import world
    from t2idemo.generate import GenerateConfig, plan_rows

    os.makedirs(out, exist_ok=True)
    rows = plan_rows(GenerateConfig(out=str(out), model="world.render", max_prompts=n_prompts, per_prompt=per_prompt))
    for row in rows:
        image, _ = world.render_prompt(row, random.Random(row["seed"]))
        image.save(os.path.join(out, row["file_name"]))
    with open(os.path.join(out, "metadata.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


@pytest.fixture
def render_dataset(tmp_path):
    """(folder, rows) of 6 rendered images: 3 prompts x 2."""
    d = tmp_path / "data"
    return str(d), make_render_dataset(d)
