"""The evaluation's settings (``EvalConfig``, read by ``evaluate`` and the main job) and its prompt splits."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import check_ranges, comma_list, ranged
from .generate import ALIGNED_MODEL, BASE_MODEL, DEFAULT_GUIDANCE, DEFAULT_STEPS, check_precision

# held-out prompts | feedback prompts | the prior's typical prompts (world.is_typical)
SPLITS = ("unseen", "seen", "typical")


@dataclass
class EvalConfig:
    # comma-separated pipeline folders (the first is the baseline)
    models: str = f"{BASE_MODEL},{ALIGNED_MODEL}"
    # comma-separated display names; empty: "base", then each folder's name
    names: str = ""
    # prompt splits, comma-separated: unseen (the paper's held-out prompts) | seen (the feedback
    # prompts) | typical (what the LAION-like prior shows most); "all" = unseen,seen
    split: str = "unseen,seen"
    # combination-prompt images per model and split; >= 500 for a +-4 pt CI
    n_combination: int = ranged(512, 1, 100_000)
    # images per model and split for each single-attribute category
    n_single: int = ranged(192, 1, 100_000)
    # sampler steps
    sample_steps: int = ranged(DEFAULT_STEPS, 1, 1000)
    # classifier-free guidance scale
    guidance: float = ranged(DEFAULT_GUIDANCE, 0.0, 100.0)
    # "auto": bfloat16 on a CPU that has it natively (a quarter faster, judged the same), else float32 | "fp32"
    precision: str = "auto"
    # image i of every model starts from seed * 100_000 + i
    seed: int = ranged(0, 0, 2_147_483_647)
    # reward model folder for best-of-N; empty: no rejection-sampling baseline
    reward: str = ""
    # N values for best-of-N on the first model, e.g. "4,16" (rejection sampling with the reward model); "" = none
    best_of: str = ""
    # combination prompts for best-of-N (each draws N images)
    n_best_of: int = ranged(128, 1, 100_000)
    # compute the FID against fresh renders
    fid: bool = True
    # report folder
    out: str = "runs/report"

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if not self.split_list() or any(sp not in SPLITS for sp in self.split_list()):
            raise ValueError(
                f"split={self.split!r} is not allowed; use one or more of {SPLITS}, comma-separated, or 'all'"
            )
        if self.models is not None and not self.model_list():  # None: the main job sets it (runconfig.eval_config)
            raise ValueError("models is empty; give at least one pipeline folder")
        if self.names and self.models is not None and len(self.name_list()) != len(self.model_list()):
            raise ValueError(
                f"names={self.names!r} gives {len(self.name_list())} names for {len(self.model_list())} models"
            )
        for n in self.best_of_list():
            if n < 2:
                raise ValueError(f"best_of={self.best_of!r}: every N must be >= 2")
        check_precision(self.precision)

    def split_list(self) -> list:
        return split_list(self.split)

    def model_list(self) -> list:
        return comma_list(self.models, "models")

    def name_list(self) -> list:
        if self.names:
            return [n.strip() for n in self.names.split(",")]
        return [
            "base" if os.path.abspath(m) == os.path.abspath(BASE_MODEL) else os.path.basename(os.path.normpath(m))
            for m in self.model_list()
        ]

    def best_of_list(self) -> list:
        return comma_list(self.best_of, "best_of", int)


def split_list(split: str) -> list:
    """ "unseen,seen" -> ["unseen", "seen"]; "all" is "unseen,seen"."""
    out = []
    for sp in comma_list(split, "split"):
        out += ["unseen", "seen"] if sp == "all" else [sp]
    return list(dict.fromkeys(out))
