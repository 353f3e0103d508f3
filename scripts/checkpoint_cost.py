"""What a fine-tune checkpoint costs: seconds per save and its size, for the main job's fine-tune (the shipped tiny
UNet, all of it trained, AdamW and EMA), saved as the fine-tune saves it (finetune_params.Checkpoint).

    python scripts/checkpoint_cost.py --saves 6

The main job saves after steps 100, 200 and 300 of 400 (finetune.checkpoint_every); the share of its fine-tune spent
saving is 3 x the seconds per save over the fine-tune stage's seconds (`python -m t2idemo run` prints each stage's
start time).
"""

import argparse
import os
import random
import tempfile
import time

import torch
from accelerate import Accelerator

from t2idemo.finetune import FinetuneConfig, stream_states
from t2idemo.finetune_data import PretrainStream, StepBatches
from t2idemo.finetune_params import EMA, Checkpoint, make_optimizer, trainable_params
from t2idemo.generate import BASE_MODEL, load_pipeline


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--saves", type=int, default=6, help="checkpoints to time; 1 - 100")
    a = p.parse_args(argv)
    if not 1 <= a.saves <= 100:
        p.error(f"--saves {a.saves} is out of range; use 1 to 100")
    cfg = FinetuneConfig(data="unused", out=tempfile.mkdtemp())
    pipe = load_pipeline(BASE_MODEL, device="cpu", dtype=torch.float32)
    accelerator = Accelerator()
    params = trainable_params(pipe.unet, cfg)
    opt = make_optimizer(params, cfg)
    _, opt = accelerator.prepare(pipe.unet, opt)
    sum(p.sum() for p in params).backward()
    opt.step()  # the optimizer holds its state, as after a training step
    ckpt = Checkpoint(accelerator, os.path.join(cfg.out, "checkpoint"), cfg, EMA(params, cfg.ema))
    rng = random.Random(0)
    batches = StepBatches(lambda n: [rng.randrange(10) for _ in range(n)], 4, 10, 0, 0, rng, steps=10)
    gen, pre = torch.Generator().manual_seed(0), PretrainStream("world", 0)
    seconds = []
    for i in range(a.saves):
        t0 = time.perf_counter()
        ckpt.save(cfg.checkpoint_every * (i + 1), stream_states(batches, 0, gen, pre, accelerator))
        seconds.append(time.perf_counter() - t0)
    size = sum(os.path.getsize(os.path.join(ckpt.folder, f)) for f in os.listdir(ckpt.folder))
    print(f"trained parameters {sum(p.numel() for p in params):,}; checkpoint {size / 2**20:.1f} MiB")
    print(
        f"seconds per save: median {sorted(seconds)[len(seconds) // 2]:.3f} ("
        + ", ".join(f"{s:.3f}" for s in seconds)
        + ")"
    )


if __name__ == "__main__":
    main()
