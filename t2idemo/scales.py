"""The notebooks' ``SCALE`` switch: the main job's presets (``runconfig.PRESETS``), and where each notebook writes.

    from t2idemo import scales
    S = scales.settings("shapes")     # runconfig.preset("shapes"): the tiny shapes world on a CPU (the default)
    S = scales.settings("sd15")      # runconfig.preset("sd15"): Stable Diffusion v1.5 + CLIP ViT-L/14 on a GPU (Colab)
    P = scales.paths(S)               # where each stage writes: runs/nb/shapes/feedback, .../reward, ...

``S`` is a ``runconfig.RunConfig``: the very configs ``python -m t2idemo run`` uses (``S.generate``, ``S.labels``,
``S.reward``, ``S.finetune``, ``S.evaluate``), so a notebook and the main job cannot disagree on a default; each
stage's config on the notebook folders is ``runconfig.round_configs`` of them (``scales.stages``), as in the main job.
The switch changes model and CLIP ids and sizes, nothing else: every notebook calls the same library functions at
both scales. Two things follow from the data rather than from a choice: the judge (the simulated labeler) reads
only the shapes world, so at SD scale people label in the widget (``S.judge`` is False), and the pre-training term
of the fine-tune loss needs images: fresh renders of the world, or at SD scale a set drawn from the base model.

``small`` (default: the environment variable ``T2IDEMO_SMALL=1``) takes the "-small" preset, which shrinks sizes
so that CI executes each notebook in a minute or two on a CPU; the numbers then only show that the code runs.

The ``ensure_*`` helpers let each notebook run on its own: they make the feedback set, its labels and the
reward model from the settings when an earlier notebook has not left them in the work folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .loop import LoopConfig
from .runconfig import RECIPES, Round, RoundFolders, RunConfig, changed, preset, round_configs

SCALES = ("shapes", "sd15")
WORK_ENV = "T2IDEMO_WORK"  # environment variable: the notebooks' work folder (default runs/nb)
SMALL_ENV = "T2IDEMO_SMALL"  # environment variable: 1 shrinks every size (CI)

# What only the notebooks use, per prompt set or preset: the prompts of the side-by-side grids, the reward model's
# held-out test set (unseen prompts, images per prompt; 0 = all 163 of the shapes world) and, at SD scale, the
# number of prompts of the D_pre set drawn from the base model
GRIDS = {
    "shapes": (
        "two circles",
        "a red square",
        "a triangle on snow",
        "three purple circles on grass",
        "a blue circle on night",
        "two green squares on sand",
    ),
    "sd": ("two dogs", "a green colored dog", "a cat on the moon", "two blue dogs in the forest"),
}
HELDOUT = {"shapes": (0, 2), "shapes-small": (32, 2), "sd15": (50, 2), "sd15-small": (8, 2)}
PRETRAIN_PROMPTS = {"sd15": 400, "sd15-small": 16}
# the short session (notebook 00's last step) at CI's size: one screen of labels, a few steps, no unlabelled images
SESSION_SMALL = dict(images_per_draw=8, train_steps=4, tune_batch=4, unlabelled_per_prompt=0, eval_images=16)


def is_small(small: bool | None = None) -> bool:
    """``small``, or when it is None the environment variable T2IDEMO_SMALL (1, true, yes or on)."""
    if small is not None:
        return bool(small)
    return os.environ.get(SMALL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def settings(scale: str = "shapes", small: bool | None = None, recipe: str = "filtered", **changes) -> RunConfig:
    """The preset of ``scale`` ("shapes" or "sd15"; "-small" when ``small``, None reads T2IDEMO_SMALL), with the
    fine-tune ``recipe`` and ``changes`` ("stage.field" keys) on top: ``runconfig.preset``."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not one of {SCALES}: 'shapes' runs on a CPU, 'sd15' needs a GPU")
    name = scale + ("-small" if is_small(small) else "")
    return preset(name, recipe, **changes)


def small(S: RunConfig) -> bool:
    """True for the "-small" presets (CI sizes)."""
    return S.preset.endswith("-small")


def session_config(S: RunConfig) -> LoopConfig:
    """The short session's settings (``t2idemo.loop``): the app's, ``LoopConfig()``, on S's model; CI's sizes when
    S is small."""
    return LoopConfig(model=S.model, **(SESSION_SMALL if small(S) else {}))


def grid_prompts(S: RunConfig) -> tuple:
    """The prompts of the notebooks' side-by-side grids (four of them at the small size)."""
    grid = GRIDS[S.generate.prompt_set]
    return grid[:4] if small(S) else grid


@dataclass(frozen=True)
class Paths:
    """Where the notebooks' stages read and write, all under one work folder."""

    work: str  # the work folder of this scale and size
    feedback: str  # stage 1: the labelled feedback set (imagefolder + labels.sqlite)
    heldout: str  # stage 2: images of unseen prompts, the reward model's test set
    reward: str  # stage 2: the reward model (head.safetensors + reward_config.json)
    unlabelled: str  # stage 3: extra generations, weighted by the reward model
    pretrain: str  # stage 3 at SD scale: D_pre drawn from the base model
    aligned: str  # stage 3: the fine-tuned pipeline folder
    report: str  # evaluation reports


def paths(S: RunConfig, run: str = "", work: str | None = None) -> Paths:
    """The folders of ``S`` under ``work`` (default: $T2IDEMO_WORK, else runs/nb): WORK/<preset>/<run>/, one folder
    per scale and size (a small run never resumes into a full one) and per ``run`` ("" for the stage notebooks
    01-04, which share their folders; "quickstart" for 00)."""
    root = work or os.environ.get(WORK_ENV) or os.path.join("runs", "nb")
    w = os.path.normpath(os.path.join(root, S.preset, run))
    return Paths(
        work=w,
        **{
            k: os.path.join(w, k)
            for k in ("feedback", "heldout", "reward", "unlabelled", "pretrain", "aligned", "report")
        },
    )


# ----------------------------------------------------------------------------- notebook plumbing
def stages(S: RunConfig, P: Paths, model: str | None = None) -> Round:
    """Every stage's config on the notebook folders ``P``, from ``model`` (default ``S.model``): the main job's
    round derivation (``runconfig.round_configs``), round 0 (the seeds are S.seed's)."""
    folders = RoundFolders(
        feedback=P.feedback, reward_data=P.feedback, reward=P.reward, unlabelled=P.unlabelled, aligned=P.aligned
    )
    return round_configs(S, 0, model or S.model, folders)


def feedback_config(S: RunConfig, P: Paths):
    """The GenerateConfig of the labelled feedback set (notebooks 00 and 01): the main job's."""
    return stages(S, P).feedback


def unlabelled_config(S: RunConfig, P: Paths):
    """The GenerateConfig of the unlabelled generations the reward model scores (notebook 03): the main job's."""
    return stages(S, P).unlabelled


def image_set(
    S: RunConfig,
    P: Paths,
    out: str,
    split: str,
    seed: int,
    max_prompts: int,
    per_prompt: int,
    model: str | None = None,
):
    """A GenerateConfig of another set drawn from ``S.model`` with the feedback set's sampler settings, in ``out``
    (the reward model's held-out test set, the SD-scale D_pre, a model's images to label); ``model``: default
    S.model."""
    return dataclasses.replace(
        feedback_config(S, P),
        out=out,
        split=split,
        seed=seed,
        max_prompts=max_prompts,
        per_prompt=per_prompt,
        model=model or S.model,
    )


def _labelled(folder: str) -> bool:
    from .data import load_rows

    return any(r.get("label") in ("good", "bad") for r in load_rows(folder, missing_ok=True))


def ensure_feedback(S: RunConfig, P: Paths, pipe=None) -> str:
    """The labelled feedback set of notebook 01: drawn and labelled by the judge here if it is not there yet."""
    from .generate import generate_dataset
    from .labels import label

    if os.path.isdir(P.feedback) and _labelled(P.feedback):
        return P.feedback
    if not S.judge:
        raise ValueError(f"{P.feedback} holds no labels yet; at SD scale people label it: run notebook 01 first")
    rnd = stages(S, P)
    generate_dataset(rnd.feedback, pipe)
    label(rnd.labels)  # the judge labels them, exported into the rows
    return P.feedback


def ensure_heldout(S: RunConfig, P: Paths, pipe=None) -> str:
    """The held-out (unseen-prompt) test set of notebook 02, drawn here if it is not there yet."""
    from .generate import generate_dataset

    n_prompts, per_prompt = HELDOUT[S.preset]
    generate_dataset(image_set(S, P, P.heldout, "unseen", 1, n_prompts, per_prompt), pipe)
    return P.heldout


def reward_config(S: RunConfig, P: Paths, **changes):
    """The RewardConfig of notebook 02: ``S.reward`` (the paper's lambda = 0.5, N = 4) on the notebook folders,
    with ``changes`` on top."""
    return dataclasses.replace(stages(S, P).reward, **{"eval_data": P.heldout, **changes})


def ensure_reward(S: RunConfig, P: Paths) -> str:
    """The reward model of notebook 02, trained here (on the labelled feedback set) if it is not there yet."""
    from .reward import CONFIG_FILE
    from .reward_train import train

    if not os.path.isfile(os.path.join(P.reward, CONFIG_FILE)):
        train(reward_config(S, P, data=ensure_feedback(S, P)))
    return P.reward


def pretrain_data(S: RunConfig, P: Paths, pipe=None) -> str:
    """D_pre of the fine-tune loss: "world" (fresh renders) in the shapes world; at SD scale a set of
    ``PRETRAIN_PROMPTS`` images drawn from the base model over every prompt of the set (a stand-in for LAION
    that keeps the tuned model near the base model's own distribution)."""
    from .generate import generate_dataset

    if S.judge:
        return "world"
    generate_dataset(image_set(S, P, P.pretrain, "all", 2, PRETRAIN_PROMPTS[S.preset], 1), pipe)
    return P.pretrain


def finetune_config(S: RunConfig, P: Paths, recipe: str = "", **changes):
    """The FinetuneConfig of notebooks 00, 03 and 04: the main job's fine-tune on the notebook folders, with the
    fine-tune ``recipe`` (runconfig.RECIPES: "paper" weights every image by r) and ``changes`` on top."""
    if recipe and recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not allowed; use one of {tuple(RECIPES)}")
    (cfg,) = stages(changed(S, **RECIPES.get(recipe, {})), P).finetune.values()
    unl = cfg.unlabelled if cfg.unlabelled and os.path.isfile(os.path.join(cfg.unlabelled, "metadata.jsonl")) else ""
    return dataclasses.replace(cfg, **{"unlabelled": unl, **changes})


def ensure_run(S: RunConfig, P: Paths, name: str = "main", recipe: str = "", **changes) -> dict:
    """The results of ``python -m t2idemo run`` on ``S`` (with the fine-tune ``recipe`` and ``changes``, "stage.field"
    keys) in WORK/NAME, run here unless a finished run with the same config is there. Shapes world only (the judge)."""
    from .run import run_or_read

    if not S.judge:
        raise ValueError(
            f"preset={S.preset!r}: the main job labels with the judge, which reads only the shapes world; "
            "use scale='shapes'"
        )
    if recipe and recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not allowed; use one of {tuple(RECIPES)}")
    return run_or_read(changed(S, **{"out": os.path.join(P.work, name), **RECIPES.get(recipe, {}), **changes}))


def overopt_config(S: RunConfig, run: str, **changes):
    """The OveroptConfig of the curve on the finished run folder ``run`` (its defaults at the full size)."""
    from .overopt import OveroptConfig

    size = dict(train_steps=f"0,2,{S.finetune.train_steps}", n_combination=16, n_single=8) if small(S) else {}
    return OveroptConfig(**{"run": run, **size, **changes})


def result(**values) -> None:
    """Print one machine-readable line, ``RESULT key=value ...``, that tests/test_notebooks.py reads from the
    executed notebook (floats to 4 significant digits; values must not contain spaces)."""
    print("RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


def strip_outputs(path: str) -> bool:
    """Clear a notebook's outputs, execution counts and saved widget state in place, which is how notebooks are
    kept in git (tests/test_notebooks.py checks it). Returns True if the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)
    return after != before


def strip_main(argv=None) -> int:
    """``python -m t2idemo strip NOTEBOOK.ipynb ...``: clear the outputs before committing."""
    from .config import Parser

    p = Parser(prog="python -m t2idemo strip", description="Clear notebooks' outputs before committing them.")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK.ipynb", help="notebook files to strip in place")
    args = p.parse_args(argv)
    for path in args.notebooks:
        if not os.path.isfile(path):
            p.error(f"notebook={path!r} is not a file; pass .ipynb files, e.g. notebooks/*.ipynb")
    for path in args.notebooks:
        print(("stripped " if strip_outputs(path) else "clean    ") + path)
    return 0


if __name__ == "__main__":
    raise SystemExit(strip_main())
