"""Benchmarks that print the figures quoted in the README. Each is a plain function plus a CLI:

python -m t2idemo benchmarks judge   # judge vs truth on fresh renders
python -m t2idemo benchmarks vae     # judge vs truth on fresh renders after the VAE's round trip
python -m t2idemo benchmarks clip    # tiny-CLIP zero-shot accuracy per attribute
python -m t2idemo benchmarks base    # base-model accuracy per category (judge, default sampler)
python -m t2idemo benchmarks speed   # images/s, batches of 64 with guidance
python -m t2idemo benchmarks sizes   # bytes of the shipped weights
python -m t2idemo benchmarks app --runs 5                 # the app's Compare: 4 base + 4 aligned images, 5 times
python -m t2idemo benchmarks app --runs 5 --during-tune   # ... while a visitor's fine-tune runs
python -m t2idemo benchmarks app --visitor --labels 192   # one visitor's loop, step by step
python -m t2idemo benchmarks session --labels 0,24,48,96,192 --flip 0.1   # what a short session buys (minutes
                                     # a point: t2idemo.session_curve), a table and the curve the app shows
python -m t2idemo benchmarks all     # all but --during-tune and session
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time

from . import world
from .config import SEED_MAX, comma_list
from .generate import ALIGNED_MODEL, BASE_MODEL, DEFAULT_GUIDANCE, DEFAULT_STEPS, load_pipeline, sample
from .judge import analyse, judge
from .loop import LoopConfig
from .reward import REWARD_MODEL
from .stats import wilson


def judge_accuracy(n: int = 2000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    hits = {a: 0 for a in world.ATTRIBUTES}
    t0 = time.time()
    for _ in range(n):
        sc = world.sample_scene(rng)
        pred = analyse(world.render(sc))
        for a in hits:
            hits[a] += pred[a] == getattr(sc, a)
    return {"n": n, **{a: h / n for a, h in hits.items()}, "ms_per_image": 1000 * (time.time() - t0) / n}


def vae_round_trip(model: str = BASE_MODEL, n: int = 2000, seed: int = 0) -> dict:
    """The judge on fresh renders passed through the pipeline's VAE (encode to the posterior mean, decode): how much
    of count, colour, shape and scene the latents the UNet learns on keep."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.float32).eval()
    rng = random.Random(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    hits = {a: 0 for a in world.ATTRIBUTES}
    with torch.no_grad():
        for s in range(0, n, 256):
            x = torch.from_numpy(
                world.to_array([world.render(sc) for sc in scenes[s : s + 256]])
            ).float()  # (B, 32, 32, 3)
            x = x.permute(0, 3, 1, 2) / 127.5 - 1  # (B, 3, 32, 32) in [-1, 1]
            y = vae.decode(vae.encode(x).latent_dist.mean).sample  # (B, 3, 32, 32)
            y = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (B, 32, 32, 3)
            for sc, im in zip(scenes[s : s + 256], y):
                pred = analyse(im)
                for a in hits:
                    hits[a] += pred[a] == getattr(sc, a)
    return {"n": n, **{a: h / n for a, h in hits.items()}}


def clip_zero_shot(clip_path: str | None = None, n: int = 500, seed: int = 0) -> dict:
    """Tiny-CLIP zero-shot accuracy per attribute: for a fresh render, pick the right value among
    full captions that differ only in that attribute."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from .pretrain import clip_pixels

    clip_path = clip_path or os.path.join(os.path.dirname(BASE_MODEL), "tiny-clip")
    model, tok = CLIPModel.from_pretrained(clip_path).eval(), CLIPTokenizer.from_pretrained(clip_path)
    rng = random.Random(seed)
    values = {"count": world.COUNTS, "color": list(world.COLORS), "shape": world.SHAPES, "scene": list(world.SCENES)}
    hits = {a: 0 for a in values}
    with torch.no_grad():
        for _ in range(n):
            sc = world.sample_scene(rng)
            img = model.visual_projection(
                model.vision_model(pixel_values=clip_pixels(world.to_array(world.render(sc)))).pooler_output
            )  # (1, D)
            for a, vals in values.items():
                caps = [world.caption(**{**sc.attributes(), a: v}, state_count=True) for v in vals]
                ids = tok(caps, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
                txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)  # (V, D)
                sims = torch.nn.functional.cosine_similarity(img, txt)  # (V,)
                hits[a] += vals[int(sims.argmax())] == getattr(sc, a)
    return {"n": n, **{a: h / n for a, h in hits.items()}}


def base_quality(
    model: str = BASE_MODEL,
    n_per_category: int = 150,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    pipe=None,
) -> dict:
    """Judge accuracy of a model on random prompts of each category (all splits), fixed seeds."""
    pipe = pipe or load_pipeline(model)
    rng = random.Random(seed)
    prompts, metas = [], []
    for cat in world.CATEGORIES:
        for _ in range(n_per_category):
            p, m = world.random_prompt(rng, cat)
            prompts.append(p)
            metas.append(m)
    images = sample(pipe, prompts, [seed * 100_000 + i for i in range(len(prompts))], steps, guidance)
    verdicts = [judge(im, m) for im, m in zip(images, metas)]
    by_cat = {c: [v for v, m in zip(verdicts, metas) if m["category"] == c] for c in world.CATEGORIES}
    single = {  # the attribute each single-attribute category asks about
        "count": sum(v["correct"]["count"] for v in by_cat["count"]) / len(by_cat["count"]),
        "color": sum(v["correct"]["color"] for v in by_cat["color"]) / len(by_cat["color"]),
        "scene": sum(v["correct"]["scene"] for v in by_cat["background"]) / len(by_cat["background"]),
    }
    combo = by_cat["combination"]
    combo_attr = {a: sum(v["correct"][a] for v in combo) / len(combo) for a in world.ATTRIBUTES}
    good = {c: sum(v["good"] for v in vs) / len(vs) for c, vs in by_cat.items()}
    return {
        "n": len(images),
        "single": single,
        "good": good,
        "combination_attr": combo_attr,
        "combination_all": good["combination"],
        "images": images,
        "metas": metas,
    }


def speed(
    model: str = BASE_MODEL,
    batch: int = 64,
    batches: int = 3,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> dict:
    pipe = load_pipeline(model)
    prompts = [p for p, _ in world.all_prompts()][:batch]
    sample(pipe, prompts[:8], list(range(8)), steps, guidance)  # warm-up
    t0 = time.time()
    for b in range(batches):
        sample(pipe, prompts, [b * batch + i for i in range(batch)], steps, guidance, batch_size=batch)
    dt = time.time() - t0
    return {"images_per_s": batch * batches / dt, "batch": batch, "steps": steps, "guidance": guidance}


def sizes() -> dict:
    assets = os.path.dirname(BASE_MODEL)
    out = {}
    for name in sorted(os.listdir(assets)):
        d = os.path.join(assets, name)
        if os.path.isdir(d):
            out[name] = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    out["total"] = sum(out.values())
    return out


def app_latency(backend, runs: int, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE) -> list[float]:
    """Seconds per Compare call of the app (a ``backend.Backend``), as a visitor asks for it at default settings:
    4 base + 4 aligned images of the default prompt from seeds k .. k+3 (run k), judged and scored."""
    from .backend import DEFAULT_PROMPT

    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        backend.draw_and_rate(DEFAULT_PROMPT, list(range(k, k + 4)), steps, guidance)
        times.append(time.perf_counter() - t0)
    return times


def app_latency_during_tune(
    backend, runs: int, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE
) -> tuple[list[float], float]:
    """``app_latency`` while one visitor's fine-tune runs: draw a labelling batch (``backend.loop.images_per_draw``),
    label it with the judge, train the reward model, start a ``backend.loop.train_steps``-step fine-tune in a
    thread, then time ``runs`` Compare calls. Returns (times, the fine-tune's seconds)."""
    from .labels import simulate_labels

    backend.label_draw(backend.loop.images_per_draw)
    simulate_labels(backend.label_dir, labeler="benchmark")
    reward, _ = backend.train_reward_model("benchmark")
    t0, done = time.perf_counter(), {}
    thread = threading.Thread(
        target=lambda: done.update(
            result=backend.tune("benchmark", reward, backend.loop.train_steps), seconds=time.perf_counter() - t0
        )
    )
    thread.start()
    while backend.job_sid is None and thread.is_alive():
        time.sleep(0.05)
    times = app_latency(backend, runs, steps, guidance)
    if "seconds" in done:
        print("warning: the fine-tune ended before the last Compare call; raise --train-steps")
    thread.join()
    if "seconds" not in done:
        raise RuntimeError("the fine-tune failed (its traceback is above)")
    return times, done["seconds"]


def app_visitor(backend, n_labels: int, train_steps: int) -> dict:
    """One visitor's loop through the app's backend, timed step by step, the judge as the labeler: Draw ``n_labels``
    images (in batches of at most 64), How did I do?, Train the reward model, Fine-tune ``train_steps`` steps (then
    the judge on the loop's unseen combination prompts, base vs yours), Compare (4 + 4 + 4 images). Seconds per step
    and what each step printed."""
    from .backend import DEFAULT_PROMPT
    from .labels import simulate_labels
    from .loop import judge_agreement

    out, sid = {}, "benchmark"
    t0 = time.perf_counter()
    for k in range(0, n_labels, 64):
        backend.label_draw(min(64, n_labels - k))
    out["draw_s"] = time.perf_counter() - t0
    simulate_labels(backend.label_dir, labeler=sid)  # the visitor: the judge, every click on disk
    t0 = time.perf_counter()
    judge_agreement(backend.label_dir, sid)
    out["agreement_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reward, out["reward"] = backend.train_reward_model(sid)
    out["reward_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, out["eval"] = backend.tune(sid, reward, train_steps)
    out["tune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.draw_and_rate(
        DEFAULT_PROMPT, [0, 1, 2, 3], DEFAULT_STEPS, DEFAULT_GUIDANCE, mine=backend.my_pipeline(sid, model)
    )
    out["compare_s"] = time.perf_counter() - t0
    return out


def print_app_latency(a) -> list[float]:
    """Build the app's backend (in a temporary folder, so no visitor's work is touched), time it as ``a`` (the
    parsed command line) says, and print the figures."""
    import torch

    from .backend import Backend

    with tempfile.TemporaryDirectory(prefix="t2idemo-app-") as workdir:
        backend = Backend(
            a.model, a.aligned, a.reward, workdir, loop=LoopConfig(train_steps=a.train_steps), threads=a.threads
        )
        if a.visitor:
            r = app_visitor(backend, a.labels, a.train_steps)
        elif a.during_tune:
            times, tune_s = app_latency_during_tune(backend, a.runs, a.sample_steps, a.guidance)
            during = f" during a {a.train_steps}-step fine-tune (which took {tune_s:.0f} s)"
        else:
            times, during = app_latency(backend, a.runs, a.sample_steps, a.guidance), ""
        backend.store.close()
    if a.visitor:
        ev = "  ".join(f"{k} {v['p']:.0%} [{v['lo']:.0%}, {v['hi']:.0%}]" for k, v in r["eval"].items())
        acc = r["reward"]["val_accuracy"]
        print(
            f"one visitor, {a.labels} judge labels, a {a.train_steps}-step fine-tune, {torch.get_num_threads()} "
            f"torch threads: Draw {r['draw_s']:.1f} s, How did I do? {r['agreement_s']:.1f} s, Train the reward "
            f"model {r['reward_s']:.1f} s (held-out accuracy {'n/a' if acc is None else f'{acc:.0f}%'}), "
            f"Fine-tune {r['tune_s']:.0f} s (then on {backend.loop.eval_images} unseen combination prompts: {ev}), "
            f"Compare {r['compare_s']:.1f} s (4 images a model, 3 models)"
        )
        return [r["tune_s"]]
    print(
        f"Compare, 4 base + 4 aligned images, {a.sample_steps} steps, guidance {a.guidance}, "
        f"{torch.get_num_threads()} torch threads{during}: "
        + ", ".join(f"{t:.2f}" for t in times)
        + f" s; median {statistics.median(times):.2f} s"
    )
    return times


def parser():
    """The command line: which benchmark, and its options."""
    from .config import Parser

    p = Parser(prog="python -m t2idemo benchmarks", description="Print the README's figures.")
    p.add_argument("what", choices=["judge", "vae", "clip", "base", "speed", "sizes", "app", "session", "all"])
    p.add_argument("--model", default=BASE_MODEL, help="pipeline folder (for 'app': the base model)")
    p.add_argument("--n", type=int, default=150, help="images per category for 'base' (4 categories)")
    p.add_argument("--sample-steps", type=int, default=DEFAULT_STEPS, help="sampler steps")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--seed", type=int, default=0)
    app = p.add_argument_group("app", "the app's Compare latency (the models app.py serves by default)")
    app.add_argument("--runs", type=int, default=5, help="Compare calls to time; 1 - 100")
    app.add_argument("--during-tune", action="store_true", help="time them while a visitor's fine-tune runs")
    app.add_argument(
        "--visitor",
        action="store_true",
        help="time one visitor's loop instead: Draw, How did I do?, "
        "Train, Fine-tune (then the judge, base vs yours), Compare; the judge labels",
    )
    app.add_argument(
        "--labels",
        default=None,
        help="with --visitor: images drawn and labelled, 4 - 512; for "
        "'session': comma-separated label counts, each 0 - 512 (default: 24; for session 0,24,48,96,192)",
    )
    app.add_argument(
        "--train-steps", type=int, default=LoopConfig.train_steps, help="steps of that fine-tune; 1 - 400"
    )
    app.add_argument("--aligned", default=ALIGNED_MODEL, help="aligned pipeline folder")
    app.add_argument("--reward", default=REWARD_MODEL, help="reward model folder")
    app.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default), as app.py")
    ses = p.add_argument_group("session", "what a short session buys (t2idemo.session_curve)")
    ses.add_argument(
        "--flip", type=float, default=0.1, help="the simulated person's share of flipped verdicts; 0 - 0.5"
    )
    ses.add_argument("--seeds", default="0,1", help="comma-separated training seeds, one session each per label count")
    ses.add_argument("--eval-images", type=int, default=256, help="unseen combination images per model; 16 - 2048")
    ses.add_argument(
        "--out", default="runs/session", help="folder for the sessions, session_curve.json and the figure"
    )
    ses.add_argument(
        "--figure",
        default=None,
        help="the curve's PNG (default: the one the app's Train tab shows, "
        "t2idemo/assets/session_curve.png); '' = none",
    )
    return p


def int_list(p, flag: str, text: str, lo: int, hi: int) -> list:
    """A comma-separated list of integers from ``lo`` to ``hi``; a parser error naming ``flag`` otherwise."""
    try:
        values = comma_list(text, flag, int, lo, hi)
    except ValueError as e:
        p.error(str(e))
    if not values:
        p.error(f"{flag} {text!r} lists no value; use integers from {lo} to {hi}, e.g. 0,24,96")
    return values


def parse_args(argv=None):
    """The parsed command line; a bad value stops it with one line naming the flag (exit status 2)."""
    p = parser()
    a = p.parse_args(argv)
    if not 1 <= a.runs <= 100:
        p.error(f"--runs {a.runs} is out of range; use 1 to 100")
    if not 1 <= a.train_steps <= 400:
        p.error(f"--train-steps {a.train_steps} is out of range; use 1 to 400")
    if a.what == "session":
        a.labels = int_list(p, "--labels", a.labels or "0,24,48,96,192", 0, 512)
        a.seeds = int_list(p, "--seeds", a.seeds, 0, SEED_MAX)
        if not 0 <= a.flip <= 0.5:
            p.error(f"--flip {a.flip} is out of range; use 0 to 0.5")
        if not 16 <= a.eval_images <= 2048:
            p.error(f"--eval-images {a.eval_images} is out of range; use 16 to 2048")
    else:
        a.labels = int_list(p, "--labels", a.labels or "24", 4, 512)[0]
    if a.threads < 0:
        p.error(f"--threads {a.threads} must be >= 0 (0 = one per core)")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.what in ("judge", "all"):
        r = judge_accuracy()
        print(
            f"judge on {r['n']} fresh renders: count {r['count']:.1%}  color {r['color']:.1%}  "
            f"shape {r['shape']:.1%}  "
            f"scene {r['scene']:.1%}  ({r['ms_per_image']:.2f} ms/image)"
        )
    if a.what in ("vae", "all"):
        r = vae_round_trip(a.model)
        print(
            f"judge on {r['n']} fresh renders after {a.model}'s VAE round trip: count {r['count']:.1%}  "
            f"color {r['color']:.1%}  shape {r['shape']:.1%}  scene {r['scene']:.1%}"
        )
    if a.what in ("clip", "all"):
        r = clip_zero_shot()
        print(
            f"tiny CLIP zero-shot on {r['n']} renders: count {r['count']:.1%}  color {r['color']:.1%}  "
            f"shape {r['shape']:.1%}  scene {r['scene']:.1%}"
        )
    if a.what in ("base", "all"):
        t0 = time.time()
        r = base_quality(a.model, a.n, a.seed, a.sample_steps, a.guidance)
        n = a.n
        print(
            f"base model {a.model} ({r['n']} images, {a.sample_steps} steps, guidance {a.guidance}, "
            f"{time.time() - t0:.0f} s):"
        )
        for k, v in r["single"].items():
            lo, hi = wilson(round(v * n), n)
            print(f"  {k:<6} right on its single-attribute prompts: {v:.1%}  [{lo:.1%}, {hi:.1%}]")
        for c, v in r["good"].items():
            lo, hi = wilson(round(v * n), n)
            print(f"  {c:<12} prompts, all named attributes right: {v:.1%}  [{lo:.1%}, {hi:.1%}]")
        print(
            "  combination prompts, per attribute: "
            + "  ".join(f"{k} {v:.1%}" for k, v in r["combination_attr"].items())
        )
    if a.what in ("speed", "all"):
        r = speed(a.model, steps=a.sample_steps, guidance=a.guidance)
        print(
            f"speed: {r['images_per_s']:.1f} images/s (batch {r['batch']}, {r['steps']} steps, "
            f"guidance {r['guidance']})"
        )
    if a.what in ("sizes", "all"):
        r = sizes()
        print("sizes: " + "  ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in r.items()))
    if a.what in ("app", "all"):
        print_app_latency(a)
    if a.what == "session":
        from .session_curve import SESSION_CURVE, curve_table, plot_curve, session_curve

        res = session_curve(a.labels, a.flip, a.seeds, a.eval_images, a.out)
        print(curve_table(res))
        if a.figure != "":
            print(f"wrote {plot_curve(res, a.figure or SESSION_CURVE)}")


if __name__ == "__main__":
    main()
