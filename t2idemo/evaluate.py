"""The paper's evaluation, on the shapes world: does the tuned model render what the prompt asks for more
often than the base, and what does it cost in image fidelity?

    python -m t2idemo evaluate --models t2idemo/assets/tiny-sd,runs/aligned --out runs/report
    python -m t2idemo evaluate summary --data DIR --reward RUN    # SD scale: people's labels, per category

For each model, on a fixed prompt set of one or more splits (``--split unseen,seen``: the held-out and the feedback
prompts, as the paper evaluated both; ``typical``: what the base's LAION-like data shows most, a sanity check), at
fixed seeds (image i of every model starts from the same noise), in the sampler's ``precision`` (generate.sample):

* **alignment**: the judge's verdict per image. For each category (count, color, background, combination) the share
  of images with every named attribute right and, per attribute, the share right where the prompt names it
  (Wilson 95%).
* **fidelity**: an FID between the model's generations and fresh renders of the same prompts, on the tiny CLIP
  image tower's pooled features (64-d) instead of Inception's (2048-d): Inception has never seen 32x32 shapes,
  while the tiny CLIP was trained on exactly this world. Lower is better; renders against other renders give the
  floor (``fid_floor`` in the results). Compare FIDs only at the same n: FID is biased upwards at small n.
* **rejection sampling** (the paper's baseline): best-of-N by reward, N = 4 and 16: draw N images per prompt and
  keep the one the reward model scores highest: N times the sampling at test time, no training.

The report folder gets ``report.md`` (the tables), ``results.json`` (every number), ``bars.png`` (accuracy per
category, with CIs) and ``samples.png`` (the same prompts and seeds, one row per model). ``plot_tradeoff`` draws
the alignment-fidelity trade-off over beta (``python -m t2idemo run --betas``).

The settings are ``eval_config.EvalConfig``; the SD-scale summary of people's labels is ``label_summary``.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from . import world
from .config import require_set
from .data import pipeline_digest
from .eval_config import SPLITS, EvalConfig, split_list
from .generate import BASE_MODEL, labelled_grid, load_pipeline, sample
from .judge import judge
from .label_summary import SummaryConfig, summary, summary_table
from .stats import wilson

REPORTED = ("count", "color", "scene", "shape")  # attributes reported per category ("scene" = background)
SEED_STRIDE = 100_000  # image i of the evaluation starts from seed cfg.seed * SEED_STRIDE + i, for every model
BEST_OF_SEED_STRIDE = 1_000_000  # best-of-N draws from seeds (cfg.seed + 1) * BEST_OF_SEED_STRIDE + ..., apart
FEATURE_CHUNK = 256  # images per CLIP forward pass of the FID's features (memory, not results)
GRID_PROMPTS = 8  # combination prompts in the report's sample grid, shared out over the splits


# ----------------------------------------------------------------------------- prompts
def eval_prompts(split: str, n_combination: int, n_single: int, seed: int = 0) -> list[dict]:
    """The evaluation prompt set: for each split and category, its prompts in a fixed shuffled order, cycled
    until the category has its number of images (the 3 typical prompts of a category get ``n_single`` each).
    Returns metadata dicts (``prompt`` and ``split`` included)."""
    metas = []
    for sp in split_list(split):
        for cat in world.CATEGORIES:
            n = n_combination if cat == "combination" and sp != "typical" else n_single
            pool = world.typical_prompts(cat) if sp == "typical" else world.all_prompts(cat, unseen=(sp == "unseen"))
            random.Random(f"{seed}-{cat}-{sp}").shuffle(pool)
            metas += [{**pool[i % len(pool)][1], "prompt": pool[i % len(pool)][0], "split": sp} for i in range(n)]
    return metas


# ----------------------------------------------------------------------------- alignment
def tally(verdicts: list[dict], metas: list[dict]) -> dict:
    """{split: {category: {"n", "good", "attr": {a: (k, n)}, "three_as_four": (k, n)}}} counts of right answers,
    and of prompts asking for three shapes drawn with four (what a four-for-three rater teaches)."""
    out = {}
    for v, m in zip(verdicts, metas):
        c = out.setdefault(m["split"], {}).setdefault(m["category"], {"n": 0, "good": 0, "attr": {}})
        c["n"] += 1
        c["good"] += bool(v["good"])
        if "count" in m["named"] and m["count"] == 3:
            k, n = c.get("three_as_four", (0, 0))
            c["three_as_four"] = (k + (v["pred"]["count"] == 4), n + 1)
        for a in m["named"]:
            k, n = c["attr"].get(a, (0, 0))
            c["attr"][a] = (k + bool(v["correct"][a]), n + 1)
    return out


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "p": k / n if n else float("nan"), "lo": lo, "hi": hi}


# ----------------------------------------------------------------------------- fidelity
@torch.no_grad()
def clip_features(images: list, clip_path: str | None = None) -> np.ndarray:
    """(N, 64) pooled features of the tiny CLIP's image tower, the FID's feature space."""
    from transformers import CLIPModel

    from .pretrain import clip_pixels

    path = clip_path or os.path.join(os.path.dirname(BASE_MODEL), "tiny-clip")
    model = CLIPModel.from_pretrained(path).vision_model.eval()
    feats = []
    for i in range(0, len(images), FEATURE_CHUNK):
        x = clip_pixels(world.to_array(images[i : i + FEATURE_CHUNK]))  # (B, 3, 32, 32)
        feats.append(model(pixel_values=x).pooler_output.double().numpy())  # (B, 64)
    return np.concatenate(feats)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real  # (D, D) the matrix square root of s1 s2
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def renders(metas: list[dict], seed: int) -> list:
    """A fresh render of each prompt (unnamed attributes random): the real-image side of the FID."""
    rng = random.Random(f"renders-{seed}")
    return [world.render_prompt(m, rng)[0] for m in metas]


# ----------------------------------------------------------------------------- rejection sampling
@torch.no_grad()
def best_of_n(pipe, reward_fn, metas: list[dict], n: int, cfg: EvalConfig) -> tuple[list, list]:
    """For each prompt draw ``n`` images (seeds distinct from the main evaluation's) and keep the one
    with the highest reward. Returns (chosen images, their rewards)."""
    chosen, scores = [], []
    for j, m in enumerate(metas):
        seeds = [(cfg.seed + 1) * BEST_OF_SEED_STRIDE + j * n + k for k in range(n)]
        imgs = sample(pipe, [m["prompt"]] * n, seeds, cfg.sample_steps, cfg.guidance, precision=cfg.precision)
        r = reward_fn(imgs, [m["prompt"]] * n)  # (n,)
        best = int(torch.as_tensor(r).argmax())
        chosen.append(imgs[best])
        scores.append(float(r[best]))
    return chosen, scores


# ----------------------------------------------------------------------------- the evaluation
def evaluate_model(pipe, metas: list[dict], cfg: EvalConfig) -> tuple[list, dict]:
    """Generate one image per prompt at fixed seeds and judge it. Returns (images, tally)."""
    images = draw(pipe, metas, range(len(metas)), cfg)
    return images, tally([judge(im, m) for im, m in zip(images, metas)], metas)


def draw(pipe, metas: list[dict], index, cfg: EvalConfig) -> list:
    """The evaluation's images of prompts ``index``: image i starts from seed ``cfg.seed * SEED_STRIDE + i``."""
    return sample(
        pipe,
        [metas[i]["prompt"] for i in index],
        [cfg.seed * SEED_STRIDE + i for i in index],
        cfg.sample_steps,
        cfg.guidance,
        precision=cfg.precision,
    )


def reusable(saved: dict, cfg: EvalConfig) -> dict:
    """{pipeline_digest: result} of the models in ``saved`` (an earlier ``evaluate``'s results) that ``cfg`` would
    evaluate to the same numbers: same sampler and precision (results older than the option have none: they are
    "fp32"), seed, sizes and FID, and ``cfg``'s splits the first of ``saved``'s (prompts and seeds of a split depend
    only on the splits before it)."""
    splits = cfg.split_list()
    keys = ("n_combination", "n_single", "sample_steps", "guidance", "seed", "fid", "precision")
    if (
        any(saved["config"].get(k, "fp32") != getattr(cfg, k) for k in keys)
        or split_list(saved["config"]["split"])[: len(splits)] != splits
    ):
        return {}
    return {
        r["digest"]: {**r, "rates": {sp: r["rates"][sp] for sp in splits}}
        for r in saved["models"].values()
        if r.get("digest")
    }


def summarise(t: dict) -> dict:
    """Counts -> rates with Wilson intervals: {split: {category: {"all": rate, attribute: rate}}}."""
    return {
        sp: {
            cat: {
                "all": rate(c["good"], c["n"]),
                **{a: rate(*kn) for a, kn in c["attr"].items()},
                **({"three_as_four": rate(*c["three_as_four"])} if "three_as_four" in c else {}),
            }
            for cat, c in cats.items()
        }
        for sp, cats in t.items()
    }


def evaluate(
    cfg: EvalConfig, pipes: dict | None = None, reward_fn=None, write: bool = True, known: dict | None = None
) -> dict:
    """Evaluate every model in ``cfg.models``; draw the report's figures into ``cfg.out``; return the results dict.
    ``pipes`` ({path: pipeline}) reuses pipelines already loaded. ``write``: also write results.json and report.md
    (``write_report``); the main job passes False and writes them itself once it has added its own fields.
    ``known`` ({digest: result}, from ``reusable``): models evaluated before with these settings; only their sample
    grid is drawn again (a study's runs share the base: ``run --reuse``)."""
    require_set(cfg)
    metas = eval_prompts(cfg.split, cfg.n_combination, cfg.n_single, cfg.seed)
    first = cfg.split_list()[0]  # FID and best-of-N use the first split's combination prompts
    combo = [i for i, m in enumerate(metas) if m["category"] == "combination" and m["split"] == first]
    per = max(1, GRID_PROMPTS // len(cfg.split_list()))  # the sample grid: as many prompts of each split
    grid = [
        i
        for sp in cfg.split_list()
        for i in [j for j, m in enumerate(metas) if m["category"] == "combination" and m["split"] == sp][:per]
    ]
    results = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "n_images": len(metas), "models": {}}
    ref_feats = None
    if cfg.fid:
        ref_imgs = renders([metas[i] for i in combo], cfg.seed)
        ref_feats = clip_features(ref_imgs)
        floor = clip_features(renders([metas[i] for i in combo], cfg.seed + 1))
        results["fid_floor"] = fid(floor, ref_feats)  # renders vs other renders: the best a model can do
    samples = {}
    for name, path in zip(cfg.name_list(), cfg.model_list()):
        pipe = (pipes or {}).get(path) or load_pipeline(path)
        digest = pipeline_digest(path)
        if digest and digest in (known or {}):  # evaluated before with these settings: read, not drawn again
            results["models"][name] = {**known[digest], "path": path}
            samples[name] = draw(pipe, metas, grid, cfg)
        else:
            images, t = evaluate_model(pipe, metas, cfg)
            res = {"path": path, "digest": digest, "rates": summarise(t)}
            res.update({"fid": fid(clip_features([images[i] for i in combo]), ref_feats)} if cfg.fid else {})
            results["models"][name] = res
            samples[name] = [images[i] for i in grid]
        if name == cfg.name_list()[0] and cfg.reward and cfg.best_of_list():
            from .reward import load_reward_fn

            reward_fn = reward_fn or load_reward_fn(cfg.reward)
            bon_metas = [metas[i] for i in combo[: cfg.n_best_of]]
            for n in cfg.best_of_list():
                imgs, _ = best_of_n(pipe, reward_fn, bon_metas, n, cfg)
                results["models"][f"{name} best-of-{n}"] = {
                    "path": path,
                    "rates": summarise(tally([judge(im, m) for im, m in zip(imgs, bon_metas)], bon_metas)),
                }
    results["sample_prompts"] = [metas[i]["prompt"] + (" (unseen)" if metas[i]["unseen"] else "") for i in grid]
    os.makedirs(cfg.out, exist_ok=True)
    plot_bars(results, os.path.join(cfg.out, "bars.png"))
    if samples and grid:
        labelled_grid(samples, results["sample_prompts"]).save(os.path.join(cfg.out, "samples.png"))
    if write:
        write_report(results, cfg.out)
    return results


# ----------------------------------------------------------------------------- report
def fmt(r: dict) -> str:
    return f"{100 * r['p']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def markdown_table(results: dict) -> str:
    """One table per split: rows are models, columns the categories' all-right rates, then per-attribute
    rates on combination prompts, then FID."""
    lines = []
    splits = sorted({sp for r in results["models"].values() for sp in r["rates"]}, key=SPLITS.index)
    for sp in splits:
        lines += [
            f"**{sp} prompts**: % of images right, [Wilson 95% CI]; n = images per cell",
            "",
            "| model | count | color | background | combination (all right) | combo: count | combo: color "
            "| combo: background | combo: shape | FID (tiny CLIP) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["models"].items():
            rates = r["rates"].get(sp, {})
            cells = []
            for cat, attr in (("count", "count"), ("color", "color"), ("background", "scene")):
                cells.append(fmt(rates[cat][attr]) + f" n={rates[cat][attr]['n']}" if cat in rates else "")
            co = rates.get("combination", {})
            cells.append(fmt(co["all"]) + f" n={co['all']['n']}" if co else "")
            cells += [fmt(co[a]) if a in co else "" for a in REPORTED]
            cells.append(f"{r['fid']:.2f}" if "fid" in r else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "fid_floor" in results:
        lines.append(f"FID floor (fresh renders against other renders, same n): {results['fid_floor']:.2f}")
    return "\n".join(lines)


def plot_bars(results: dict, path: str, split: str | None = None):
    """Bar chart: all-right rate per category for each model, with Wilson 95% error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = split or next(iter(next(iter(results["models"].values()))["rates"]))
    cats = [("count", "count"), ("color", "color"), ("background", "scene"), ("combination", "all")]
    models = [(n, r) for n, r in results["models"].items() if split in r["rates"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(models))
    for j, (name, r) in enumerate(models):
        ps, errs, xs = [], [[], []], []
        for i, (cat, key) in enumerate(cats):
            if cat not in r["rates"][split]:
                continue
            x = r["rates"][split][cat][key]
            xs.append(i + j * width)
            ps.append(100 * x["p"])
            errs[0].append(100 * (x["p"] - x["lo"]))
            errs[1].append(100 * (x["hi"] - x["p"]))
        ax.bar(xs, ps, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(
        [i + width * (len(models) - 1) / 2 for i in range(len(cats))],
        ["count", "color", "background", "combination\n(all right)"],
    )
    ax.set_ylabel("% right (judge)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{split} prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tradeoff(points: list[dict], path: str, split: str = "unseen"):
    """Alignment (combination all-right rate) against fidelity (FID) for runs that differ in beta.
    ``points``: [{"beta": b, "results": evaluate()'s dict for [base, tuned]}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pt in points:
        tuned = list(pt["results"]["models"].values())[-1]
        x = tuned["rates"][split]["combination"]["all"]
        ax.errorbar(
            tuned["fid"],
            100 * x["p"],
            yerr=[[100 * (x["p"] - x["lo"])], [100 * (x["hi"] - x["p"])]],
            fmt="o",
            capsize=3,
        )
        ax.annotate(f"beta={pt['beta']:g}", (tuned["fid"], 100 * x["p"]), textcoords="offset points", xytext=(5, 5))
    base = list(points[0]["results"]["models"].values())[0]
    xb = base["rates"][split]["combination"]["all"]
    ax.errorbar(
        base["fid"],
        100 * xb["p"],
        yerr=[[100 * (xb["p"] - xb["lo"])], [100 * (xb["hi"] - xb["p"])]],
        fmt="s",
        color="gray",
        capsize=3,
    )
    ax.annotate("base", (base["fid"], 100 * xb["p"]), textcoords="offset points", xytext=(5, -12))
    ax.set_xlabel("FID to fresh renders (tiny CLIP features; lower = more faithful)")
    ax.set_ylabel(f"{split} combinations all right (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out: str, notes: list = ()):
    """The one writer of a report folder's results.json (every number) and report.md (the table, the figures
    ``evaluate`` drew, and ``notes``: extra markdown lines such as the main job's recipe)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(
            "# t2idemo evaluation\n\n" + markdown_table(results) + "\n\n![accuracy per category](bars.png)\n\n"
            "![samples: one row per model, same prompts and seeds](samples.png)\n\nSample prompts (left to right): "
            + "; ".join(results.get("sample_prompts", []))
            + "\n"
            + "".join(f"\n{n}\n" for n in notes)
        )


def parse_args(argv=None) -> EvalConfig:
    from .config import parse_config

    return parse_config(EvalConfig, argv, prog="python -m t2idemo evaluate", description=__doc__.split("\n\n")[0])


def evaluate_main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "summary":  # SD scale: people's labels and the reward model, per category
        from .config import parse_config

        scfg = parse_config(SummaryConfig, argv[1:], prog="python -m t2idemo evaluate summary")
        print(summary_table(summary(scfg.data, scfg.reward, scfg.device)))
        return
    cfg = parse_args(argv)
    print(markdown_table(evaluate(cfg)))
    print(f"report: {os.path.join(cfg.out, 'report.md')}")


if __name__ == "__main__":
    evaluate_main()
