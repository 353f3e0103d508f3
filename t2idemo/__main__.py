"""Command line: ``python -m t2idemo <command> [options]``; ``--help`` after a command lists its options.
Bad input stops a command with one line naming it (T2IDEMO_TRACEBACK=1 shows the traceback instead)."""

import importlib
import os
import sys

# command -> (module, function taking argv); each module keeps its own argparse. One way to call them all:
# `python -m t2idemo COMMAND [ACTION] [--flags]` (an action, where a command has several, is its first word)
COMMANDS = {
    "sample": ("t2idemo.generate", "sample_main", "sample a grid of images from a pipeline"),
    "pretrain": ("t2idemo.pretrain", "cli", "train the tiny CLIP, VAE and UNet of the shapes world"),
    "reward": ("t2idemo.reward_cli", "reward_main", "train / evaluate the reward model (train | eval | study)"),
    "generate": ("t2idemo.generate", "generate_main", "generate the labelling set: K images per prompt + metadata"),
    "finetune": ("t2idemo.finetune", "finetune_main", "reward-weighted fine-tuning of a pipeline's UNet (stage 3)"),
    "label": ("t2idemo.labels", "label_main", "label a dataset with the judge as a simulated, noisy rater"),
    "evaluate": (
        "t2idemo.evaluate",
        "evaluate_main",
        "judge accuracy per category with CIs, FID, best-of-N; a report folder",
    ),
    "push": ("t2idemo.hub", "main", "push a model folder, reward model, labels and a model card to the Hub"),
    "space": ("t2idemo.space", "main", "create or update a Hugging Face Space running the app (CPU)"),
    "run": (
        "t2idemo.run",
        "run_main",
        "the main job: feedback, labels, reward, fine-tune, evaluate (--rounds, --betas)",
    ),
    "overopt": (
        "t2idemo.overopt",
        "overopt_main",
        "reward over-optimisation: proxy vs judge through a long fine-tune",
    ),
    "benchmarks": (
        "t2idemo.benchmarks",
        "main",
        "the README's figures: judge | vae | clip | base | speed | sizes | app | all",
    ),
    "sd": (
        "t2idemo.sd",
        "main",
        "SD scale: tiny random stand-in models for a dry run (tiny), the prompt set (prompts)",
    ),
    "strip": ("t2idemo.scales", "strip_main", "clear notebooks' outputs before committing them"),
    "colab": ("t2idemo.colab", "main", "write the notebooks' Colab badges and Setup cells from pyproject.toml"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {doc}" for name, (_, _, doc) in COMMANDS.items()]
        print("usage: python -m t2idemo <command> [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; use one of {tuple(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    module, func, _ = COMMANDS[argv[0]]
    try:
        rc = getattr(importlib.import_module(module), func)(argv[1:])
    except ValueError as e:  # bad input found past argparse (a folder without data, ...): one line, no traceback
        if os.environ.get("T2IDEMO_TRACEBACK"):
            raise
        print(f"python -m t2idemo {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0  # a command may return its exit status


if __name__ == "__main__":
    sys.exit(main())
