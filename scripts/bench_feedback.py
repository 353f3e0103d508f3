"""Figures for the feedback stage (issue 3): generation speed, label-store throughput, what a kill loses.

    python scripts/bench_feedback.py                       # the shipped model, on this machine
    python scripts/bench_feedback.py --images 64 --labels 2000 --kills 20

Prints one line per figure. Every file it writes goes to a temporary folder that it deletes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from t2idemo import data, generate  # noqa: E402
from t2idemo.config import comma_list  # noqa: E402
from t2idemo.label_store import LabelStore  # noqa: E402

CHILD = """
import sys
from t2idemo.label_store import LabelStore
store = LabelStore(sys.argv[1])
for i in range(int(sys.argv[3]), int(sys.argv[3]) + int(sys.argv[4])):
    store.add(f"{i:06d}.png", "good", labeler=sys.argv[2])
    print(i, flush=True)
"""
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def child(store, labeler, start, n):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, store, labeler, str(start), str(n)], stdout=subprocess.PIPE, text=True, env=ENV
    )


def bench_generation(model: str, n: int, tmp: str) -> None:
    import torch

    pipe = generate.load_pipeline(model)
    prompts = [p for p, _ in generate.world.all_prompts(unseen=False)]
    generate.sample(pipe, prompts[:8], list(range(8)))  # warm-up
    batch = [prompts[i // 4] for i in range(n)]
    t0 = time.perf_counter()
    generate.sample(pipe, batch, list(range(n)))
    dt = time.perf_counter() - t0
    print(
        f"sample(): {n} images, batch 64, {generate.DEFAULT_STEPS} steps, guidance {generate.DEFAULT_GUIDANCE}, "
        f"{pipe.device} x{torch.get_num_threads()} threads: {dt:.2f} s = {n / dt:.1f} images/s"
    )
    cfg = generate.GenerateConfig(out=os.path.join(tmp, "set"), model=model, max_prompts=n // 4, per_prompt=4)
    stats = generate.generate_dataset(cfg, pipe=pipe)
    print(
        f"generate_dataset(): {stats['generated']} images with PNG + metadata writes: {stats['seconds']:.2f} s = "
        f"{stats['generated'] / stats['seconds']:.1f} images/s"
    )


def bench_store(n: int, tmp: str) -> None:
    path = os.path.join(tmp, "one.sqlite")
    with LabelStore(path) as s:
        t0 = time.perf_counter()
        for i in range(n):
            s.add(f"{i:06d}.png", "good")
        dt = time.perf_counter() - t0
        print(
            f"store add(): {n} clicks, one fsynced transaction each: {n / dt:.0f} labels/s "
            f"({1e3 * dt / n:.2f} ms/click)"
        )
        t0 = time.perf_counter()
        s.add_many([(f"{i:06d}.png", "bad") for i in range(n)], labeler="batch")
        dt = time.perf_counter() - t0
        print(f"store add_many(): {n} clicks in one transaction: {n / dt:.0f} labels/s")

        def work(t):
            for i in range(n // 4):
                s.add(f"{i:06d}.png", "skip", labeler=f"thread{t}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        print(f"store, 4 threads sharing one LabelStore: {n} clicks: {n / dt:.0f} labels/s")
    path = os.path.join(tmp, "two.sqlite")
    LabelStore(path).close()
    t0 = time.perf_counter()
    procs = [child(path, f"proc{k}", 0, n // 2) for k in range(2)]
    for p in procs:
        p.communicate()
    dt = time.perf_counter() - t0
    with LabelStore(path) as s:
        got = s.count()
    print(f"store, 2 processes at once: {n} clicks (process start included): {n / dt:.0f} labels/s, {got}/{n} stored")


def bench_label_kills(kills: int, tmp: str) -> None:
    rng = random.Random(0)
    lost = in_flight = acked_total = 0
    for k in range(kills):
        path = os.path.join(tmp, f"kill{k}.sqlite")
        p = child(path, "kid", 0, 10**6)
        p.stdout.readline()  # running
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        acked = [0] + [int(x) for x in p.stdout.read().split()]
        with LabelStore(path) as s:  # opens cleanly after the kill
            stored = s.labels("kid")
        lost += sum(f"{i:06d}.png" not in stored for i in acked)
        in_flight += len(stored) - len(acked)
        acked_total += len(acked)
    print(
        f"label kill: {kills} SIGKILLs mid-session, {acked_total} acknowledged clicks: {lost} lost; "
        f"{in_flight} unacknowledged in-flight clicks were committed anyway"
    )


def bench_generate_kills(model: str, kills: int, tmp: str) -> None:
    lost_rows = orphans = 0
    for k in range(kills):
        out = os.path.join(tmp, f"gen{k}")
        cmd = [
            sys.executable,
            "-m",
            "t2idemo",
            "generate",
            "--out",
            out,
            "--model",
            model,
            "--max-prompts",
            "32",
            "--batch",
            "16",
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, "metadata.jsonl")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(random.Random(k).uniform(0.0, 1.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        pngs = {f for f in os.listdir(out) if f.endswith(".png") and not f.startswith(".")}
        rows = data.load_rows(out, missing_ok=True)
        lost_rows += sum(r["file_name"] not in pngs for r in rows)  # a row whose image is missing
        orphans += len(pngs - {r["file_name"] for r in rows})  # images drawn but not yet recorded
        stats = generate.generate_dataset(generate.GenerateConfig(out=out, model=model, max_prompts=32, batch=16))
        assert len(data.load_rows(out, missing_ok=True)) == stats["images"]
    print(
        f"generate kill: {kills} SIGKILLs: {lost_rows} rows without an image; {orphans} finished PNGs of "
        f"unrecorded batches redrawn on resume (a kill costs at most the batch in flight); every resume completed"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", default=generate.BASE_MODEL, help="pipeline folder")
    p.add_argument("--images", type=int, default=64, help="images to time generation on")
    p.add_argument("--labels", type=int, default=2000, help="clicks to time the store on")
    p.add_argument("--kills", type=int, default=20, help="SIGKILL trials")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for generation; 0 keeps torch's default")
    p.add_argument("--parts", default="gen,store,kill", help="comma-separated subset of gen, store, kill")
    args = p.parse_args()
    print("bench_feedback:", json.dumps(vars(args)))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    parts = set(comma_list(args.parts, "--parts"))
    tmp = tempfile.mkdtemp(prefix="bench_feedback_")
    try:
        if "gen" in parts:
            bench_generation(args.model, args.images, tmp)
        if "store" in parts:
            bench_store(args.labels, tmp)
        if "kill" in parts:
            bench_label_kills(args.kills, tmp)
            bench_generate_kills(args.model, max(1, args.kills // 4), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
