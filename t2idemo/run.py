"""The main job: the paper's whole loop on the shipped base model, then the before/after evaluation.

    python -m t2idemo run                        # one round: each prompt's 2 best good images (filtered, the default)
    python -m t2idemo run --recipe paper         # the paper's soft weights: every image weighted by w = r(x, z)
    python -m t2idemo run --preset shapes-long --ship  # the run that made the shipped aligned model and reward head
    python -m t2idemo run --rounds 2           # generate -> label -> tune, twice (round 2 starts from round 1's model)
    python -m t2idemo run --betas 0,0.5,1,2      # one fine-tune per beta: the alignment-fidelity trade-off plot
    python -m t2idemo run --finetune.lr 3e-4 --labels.flip 0.2   # any stage's option: --STAGE.FIELD (see --help)
    python -m t2idemo run --preset shapes-small  # the CI size: a few prompts and steps, about two minutes

The config (``runconfig.RunConfig``) is composed of the stage configs (generate, labels, reward, finetune, evaluate:
each stage's @dataclass is the single source of its options); a preset and a fine-tune recipe (``runconfig.PRESETS``,
``RECIPES``: plain override dicts) set their starting values, and ``runconfig.round_configs`` derives each round's.

Each round r (folders under OUT/round{r}/):
  1. feedback:   K images per seen prompt from the current model          -> feedback/ (imagefolder)
  2. labels:     the judge labels them (a simulated rater, optional noise) -> feedback/labels.sqlite, metadata
  3. reward:     frozen tiny CLIP + MLP head on every label so far        -> reward/
  4. unlabelled: more generations, scored by the reward model             -> unlabelled/
     (of every prompt: ``--unlabelled-split seen`` draws them only from the labelled ones)
  5. fine-tune:  reward-weighted loss + beta * pre-training loss          -> aligned/ (a diffusers pipeline)
Then evaluate base and every round's model on unseen and seen prompts (the judge, Wilson CIs, FID) -> OUT/report/.

``--ship`` copies the last aligned model and reward model into t2idemo/assets (what the app starts on).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import time
from contextlib import contextmanager

from . import evaluate as ev
from .data import load_rows, write_rows_atomic
from .finetune import finetune
from .generate import ALIGNED_MODEL, generate_dataset, load_pipeline
from .labels import label
from .reward import REWARD_MODEL
from .reward_train import train as train_reward
from .runconfig import NOT_RUN, RECIPES, ROUND_SETS, RunConfig, RunPaths, eval_config, preset, round_configs


class Clock:
    """The job's timings, recorded in one place: ``with clock("finetune", "round 1: 5. fine-tune"):`` prints the
    stage's heading with the time since the job started and adds the stage's seconds to ``clock.times``."""

    def __init__(self):
        self.t0, self.times = time.time(), {}

    @contextmanager
    def __call__(self, key: str, heading: str):
        print(f"\n=== {heading}  (t = {time.time() - self.t0:.0f} s)", flush=True)
        start = time.time()
        yield
        group, _, name = key.rpartition(".")  # "round1.generate" -> times["round1"]["generate"]
        (self.times.setdefault(group, {}) if group else self.times)[name] = round(time.time() - start, 1)


def run_round(cfg: RunConfig, r: int, model: str, labelled: list, clock: Clock) -> tuple[dict, list]:
    """One round from ``model``; ``labelled``: feedback folders of earlier rounds (the reward model trains on all of
    them). Returns (the tuned models {beta: folder}, every feedback folder so far)."""
    rnd = round_configs(cfg, r, model, RunPaths(cfg.out).round(r))
    pipe = load_pipeline(model)
    with clock(f"round{r}.generate", f"round {r}: 1. feedback images from {model}"):
        generate_dataset(rnd.feedback, pipe)
    lc = rnd.labels
    with clock(
        f"round{r}.label",
        f"round {r}: 2. simulated labels (judge, flip={lc.flip}, skip={lc.skip}, bias={lc.bias or 'none'})",
    ):
        label(lc)
    labelled = labelled + [rnd.feedback.out]
    with clock(f"round{r}.reward", f"round {r}: 3. reward model on {len(labelled)} labelled folder(s)"):
        if len(labelled) > 1:
            merge_folders(labelled, rnd.reward.data)
        train_reward(rnd.reward)
    if rnd.unlabelled:
        with clock(
            f"round{r}.unlabelled", f"round {r}: 4. unlabelled generations ({cfg.unlabelled_per_prompt} per prompt)"
        ):
            generate_dataset(rnd.unlabelled, pipe)
    tuned = {}
    for beta, fcfg in rnd.finetune.items():
        with clock(f"round{r}.finetune_beta{beta:g}", f"round {r}: 5. fine-tune, beta = {beta:g}"):
            tuned[beta] = finetune(fcfg)
    return tuned, labelled


def merge_folders(folders: list, out: str) -> str:
    """One imagefolder holding the images and rows of several (file names prefixed by their round)."""
    os.makedirs(out, exist_ok=True)
    rows = []
    for k, folder in enumerate(folders):
        for row in load_rows(folder, "data"):
            name = f"r{k}_{row['file_name']}"
            if not os.path.exists(os.path.join(out, name)):
                shutil.copy(os.path.join(folder, row["file_name"]), os.path.join(out, name))
            rows.append({**row, "file_name": name})
    write_rows_atomic(out, rows)
    return out


def reuse_images(run: str, paths: RunPaths) -> None:
    """Copy a finished run's round-1 feedback images and unlabelled generations into ``paths`` (not their labels):
    the labels, reward model and fine-tune are redone on the same images. Generation then resumes, and refuses
    the copies if this run's settings would draw other images."""
    src, dst = RunPaths(run).round(1), paths.round(1)
    for name in ("feedback", "unlabelled"):
        s, d = getattr(src, name), getattr(dst, name)
        if not os.path.isfile(os.path.join(s, "metadata.jsonl")):
            raise ValueError(
                f"reuse={run!r} has no round-1 {name} images ({s}); run `python -m t2idemo run --out {run}` first"
            )
        if os.path.isdir(d):
            continue  # copied before (a resumed run)
        shutil.rmtree(d + ".tmp", ignore_errors=True)  # a copy a crash cut short
        shutil.copytree(s, d + ".tmp", ignore=shutil.ignore_patterns("labels.sqlite*", "*.tmp"))
        rows = [{k: v for k, v in row.items() if k != "label"} for row in load_rows(d + ".tmp", name)]
        write_rows_atomic(d + ".tmp", rows)  # the images without their rater's labels
        os.rename(d + ".tmp", d)
        print(f"reused {len(rows)} {name} images from {s}")


def run(cfg: RunConfig) -> dict:
    """The paper's loop for ``cfg.rounds`` rounds, then the before/after evaluation and its report -> the results."""
    if not cfg.judge:
        raise ValueError(
            f"preset={cfg.preset!r} (prompt_set={cfg.generate.prompt_set!r}): the main job labels with the "
            "judge, which reads only the shapes world; at SD scale people label (notebooks 00-04)"
        )
    clock, paths = Clock(), RunPaths(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.reuse:
        reuse_images(cfg.reuse, paths)
    model, labelled, models = cfg.model, [], {"base": cfg.model}
    for r in range(1, cfg.rounds + 1):
        tuned, labelled = run_round(cfg, r, model, labelled, clock)
        models.update({f"round {r}" if not cfg.betas else f"beta {b:g}": path for b, path in tuned.items()})
        # the next round starts from this round's model at finetune.beta (a betas sweep runs one round only)
        model = tuned[cfg.finetune.beta] if cfg.finetune.beta in tuned else list(tuned.values())[-1]
    with clock("evaluate", f"evaluate {len(models)} models on {cfg.evaluate.split} prompts"):
        ecfg = eval_config(cfg, models, paths)
        saved = (
            saved_results(cfg.reuse) if cfg.reuse else None
        )  # a study's runs share RUN's base: its evaluation is read
        results = ev.evaluate(ecfg, write=False, known=ev.reusable(saved, ecfg) if saved else {})
    clock.times["total"] = round(time.time() - clock.t0, 1)
    report(cfg, results, clock.times, paths)
    if cfg.ship:
        ship(model, paths.round(cfg.rounds).reward)
    return results


def report(cfg: RunConfig, results: dict, times: dict, paths: RunPaths) -> None:
    """The one writer of the job's report: OUT/report (report.md, results.json with the config and timings, the
    beta sweep's trade-off plot), and the table printed at the end."""
    notes = []
    if cfg.betas:
        base = results["models"]["base"]
        points = [
            {"beta": b, "results": {"models": {"base": base, f"beta {b:g}": results["models"][f"beta {b:g}"]}}}
            for b in cfg.beta_list()
        ]
        ev.plot_tradeoff(
            points, os.path.join(paths.report, "tradeoff.png"), split=ev.split_list(cfg.evaluate.split)[0]
        )
        notes.append("![alignment-fidelity trade-off over beta](tradeoff.png)")
    results["timings_s"] = times
    results["run_config"] = dataclasses.asdict(cfg)
    results["recipe"] = recipe_line(cfg)
    ev.write_report(results, paths.report, notes=notes + [results["recipe"]])
    print("\n" + ev.markdown_table(results) + "\n" + results["recipe"])
    print(f"\ntotal {times['total']:.0f} s; report in {paths.report}")


def run_or_read(cfg: RunConfig) -> dict:
    """``run(cfg)``'s results, read from ``cfg.out`` instead when a finished run with this very config is there."""
    saved = saved_results(cfg.out)
    if saved and saved.get("run_config") == dataclasses.asdict(cfg):
        return saved
    return run(cfg)


def saved_results(folder: str) -> dict | None:
    """A finished run's results.json (every number of its report), or None."""
    done = RunPaths(folder).results
    if not os.path.isfile(done):
        return None
    with open(done) as f:
        return json.load(f)


def recipe_line(cfg: RunConfig) -> str:
    """One line naming the fine-tune recipe, for the printed report."""
    f = cfg.finetune
    if f.method == "dpo":
        data = (
            f"Diffusion-DPO (`--recipe dpo`, beta_dpo {f.dpo_beta:g}): each prompt's {f.top_k or 2} best good "
            f"images against its worst bad ones (good: labelled good, or r(x, z) >= {f.min_reward or 0.5:g}), the "
            f"base as reference, no D_pre term"
        )
        return (
            f"Fine-tune recipe: {data}; {f.train_steps} steps of {f.batch} pairs at lr {f.lr:g}, "
            f"{cfg.rounds} round(s)."
        )
    if not f.top_k and not f.min_reward and f.weight == "reward":
        data = "every image weighted by the reward model's r(x, z) (the paper's recipe)"
    else:
        good = "labelled good" if f.weight == "label" else f"r >= {f.min_reward:g} when labelled too"
        kept = f"each prompt's {f.top_k} best images that are good" if f.top_k else "every good image"
        weight = "at weight 1" if f.top_k else "weighted by r (labelled: the label)"
        data = (
            f"filtered: {kept} ({good}; unlabelled: r(x, z) >= {f.min_reward:g}), {weight} "
            f"(`--recipe paper`: every image weighted by r)"
        )
    return (
        f"Fine-tune recipe: {data}; beta {cfg.beta_list() if cfg.betas else f.beta}, {f.train_steps} steps at lr "
        f"{f.lr:g}, {cfg.rounds} round(s)."
    )


def ship(aligned: str, reward: str):
    """Copy the aligned pipeline (without its checkpoint and its step{n} snapshots) and the reward model into the
    package assets."""
    for src, dst in ((aligned, ALIGNED_MODEL), (reward, REWARD_MODEL)):
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint", "step*", "*.png"))
        portable(dst)
        print(f"shipped {src} -> {dst}")


def portable(folder: str) -> None:
    """Keep this machine's paths out of a shipped copy: drop the ``"_name_or_path"`` line that diffusers and
    transformers write into a config.json (the absolute folder it was loaded from), and write finetune.json's
    folders that lie in the repository relative to it (the fine-tune's record of what it read stays readable)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: t2idemo/..
    for path in glob.glob(os.path.join(folder, "**", "config.json"), recursive=True):
        with open(path) as f:
            config = json.load(f)
        if config.pop("_name_or_path", None) is not None:
            with open(path, "w") as f:
                f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")  # as diffusers and transformers write it
    record = os.path.join(folder, "finetune.json")
    if os.path.isfile(record):
        with open(record) as f:
            saved = json.load(f)
        for key, value in saved.get("config", {}).items():
            if isinstance(value, str) and os.path.isabs(value) and value.startswith(root + os.sep):
                saved["config"][key] = os.path.relpath(value, root)
        with open(record, "w") as f:
            json.dump(saved, f, indent=2)  # as finetune() writes it


def parse_args(argv=None) -> RunConfig:
    """``--preset`` and ``--recipe`` choose the starting values; every other flag changes one of them."""
    import argparse

    from .config import Parser, parse_config

    prog, description = "python -m t2idemo run", __doc__.split("\n\n")[0]
    first = Parser(prog=prog, add_help=False)
    first.add_argument("--preset", default="shapes")
    first.add_argument("--recipe", default="filtered")
    chosen, _ = first.parse_known_args(argv)
    try:
        base = preset(chosen.preset, chosen.recipe)
    except ValueError as e:
        first.error(str(e))
    p = Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage=f"{prog} [--preset NAME] [--recipe NAME] [--FIELD VALUE ...] [--STAGE.FIELD VALUE ...]",
        epilog="Set by each round, so not options: " + ", ".join(sorted(ROUND_SETS)) + ". Options of `python -m "
        "t2idemo reward eval|study`, which the main job does not run: " + ", ".join(sorted(NOT_RUN)) + ".",
    )
    p.add_argument(
        "--recipe",
        default="filtered",
        choices=tuple(RECIPES),
        help="the fine-tune recipe, applied to "
        "the preset before the --finetune.* flags: "
        + "; ".join(f"{k}: {v or 'the preset as it is'}" for k, v in RECIPES.items()),
    )
    return parse_config(RunConfig, argv, defaults=base, skip=ROUND_SETS | NOT_RUN, parser=p)


def run_main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    run_main()
