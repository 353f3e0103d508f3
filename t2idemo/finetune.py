"""Stage 3: reward-weighted fine-tuning (Lee et al. 2023, eq. 2).

    loss = E_{(x,z) in D_model}[ w(x,z) * ||eps - eps_theta(x_t, t, z)||^2 ]
         + beta * E_{(x,z) in D_pre}[ ||eps - eps_theta(x_t, t, z)||^2 ]

D_model is the labelled feedback images plus (optionally) unlabelled generations, each weighted by the
reward model's w = r(x, z) in [0, 1] (the paper), or by the human label where one exists (an option);
``min_reward`` and ``top_k`` filter it (each prompt's k best images the reward model calls good, at weight 1).
D_pre is fresh renders of the prior the base model learnt from (its ``prior.json``; for the LAION-like base,
typical colours and scenes, the scene often unstated: the analogue of the paper's pre-training data); at SD
scale, an imagefolder you supply. beta keeps the model close to its pre-training distribution: beta = 0 chases the
reward and pays in image fidelity.

Prediction type. The loss is written for the target the UNet predicts: eps for SD v1.5, v for the tiny
model (trained with zero terminal SNR, where eps is not defined at t = T). Since
eps - eps_theta = sqrt(alpha_bar_t) * (v - v_theta), the v loss is the paper's eps loss with a per-timestep
weight 1 / alpha_bar_t, the weight the model was pre-trained with.

LoRA (SD scale). With ``lora_rank > 0`` the UNet is frozen (stored in fp16/bf16 under mixed precision) and
a peft LoRA adapter on its attention projections is trained instead, as in diffusers'
train_text_to_image_lora.py. OUT then holds the adapter (``pytorch_lora_weights.safetensors``, for
``pipe.load_lora_weights(OUT)`` on the base model) and the full pipeline with the adapter fused in, so every
later stage reads OUT like any pipeline folder. The memory plan for a 16 GB GPU is in ``t2idemo/sd.py``.

The code reads top to bottom: ``finetune`` loads the pipeline, encodes D_model (and a fixed D_pre) once, sets up
what trains, its optimizer, EMA and checkpoint (``finetune_data``, ``finetune_params``), then loops over batches
calling one step function, chosen once: ``reward_step`` (Lee et al.) or ``dpo_step`` (Diffusion-DPO).

    python -m t2idemo finetune --data runs/feedback --reward runs/reward --out runs/aligned
    accelerate launch -m t2idemo.finetune --data ... # several GPUs / mixed precision

Several processes (``accelerate launch --num_processes N``): the encoded images sit in a Dataset whose DataLoader
``accelerator.prepare`` shards, as in diffusers' training scripts, so each process trains on its own batches
(its own noise too) and the gradients are averaged: N processes take N batches per step. On CPUs (the two-process
test): ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m t2idemo.finetune ...``.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .config import check_ranges, comma_list, ranged, require_set, seed_field
from .dpo import dpo_loss
from .finetune_data import (
    Batch,
    FrozenEncoders,
    Pairs,
    PretrainStream,
    StepBatches,
    as_batch,
    batch_sampler,
    cached_dataset,
    dpo_dataset,
    model_dataset,
)
from .finetune_params import (
    EMA,
    Checkpoint,
    make_optimizer,
    trainable_params,
)
from .finetune_save import save_snapshot, train_scheduler, write_tuned
from .generate import BASE_MODEL, load_pipeline

GRAD_CLIP = 1.0  # the gradients' largest L2 norm per step, as in diffusers' training scripts
SEED_STRIDE = 1000  # process k of a multi-process fine-tune draws its own noise and D_pre from seed + k * 1000


@dataclass
class FinetuneConfig:
    # labelled feedback folder (metadata.jsonl with "label" + PNGs)
    data: str = "runs/feedback"
    # output StableDiffusionPipeline folder
    out: str = "runs/aligned"
    # pipeline folder or hub id to start from
    model: str = BASE_MODEL
    # reward model folder; empty: weights come from the labels
    reward: str = ""
    # "reward": w = r(x, z) for every image (paper); "label": good=1/bad=0 where labelled
    weight: str = "label"
    # folder of extra generations (no labels), weighted by the reward model
    unlabelled: str = ""
    # 0 = the paper (every image, weight w); k > 0 = keep only each prompt's k highest-weight images,
    # at weight 1 (filtered fine-tuning, as in RAFT: beyond the paper, see docs/findings.md)
    top_k: int = ranged(2, 0, 64)
    # drop D_model images whose weight is below this (0 = keep all, the paper; 0.5 = the reward
    # model's pseudo-label "good"); applied before top_k, so a prompt with no good image adds
    # nothing instead of its least bad ones
    min_reward: float = ranged(0.5, 0.0, 1.0)
    # "reward" = Lee et al.: the reward-weighted loss + beta * D_pre | "dpo" = Diffusion-DPO
    # (t2idemo.dpo): pairs of a prompt's good and bad images against the frozen base, no D_pre;
    # a step of `batch` pairs trains on 2 * batch latents (weight, beta and pre_* unused)
    method: str = "reward"
    # Diffusion-DPO's beta: how hard a pair's loss gap is pushed (SD: 2500 - 5000)
    dpo_beta: float = ranged(2000.0, 1.0, 100_000.0)
    # how a D_model batch is drawn: "none" = uniformly over the kept images | "category" = each
    # prompt category (count, colour, background, combination) equally often, then an image of
    # it: the few count prompts are not drowned by the many combinations | "sqrt" = a category
    # in proportion to the square root of its size (between the two); rows with no category
    # form one group
    balance: str = "none"
    # "world": fresh renders of the prior the base learnt from (its prior.json; the
    # LAION-like prior for a new base, "uniform" for the first shipped one); or an imagefolder
    # (metadata.jsonl with "prompt")
    pretrain_data: str = "world"
    # 0 = draw and VAE-encode a fresh D_pre batch every step; n > 0 = draw and encode n images once
    # (a fixed pre-training set, as the paper's LAION subset), about a fifth faster per step
    pre_pool: int = ranged(4096, 0, 1_000_000)
    # weight of the pre-training term (0 = no regulariser)
    beta: float = ranged(1.0, 0.0, 100.0)
    # optimizer steps
    train_steps: int = ranged(400, 1, 1_000_000)
    # D_model images per step
    batch: int = ranged(64, 1, 65_536)
    # D_pre images per step
    pre_batch: int = ranged(64, 1, 65_536)
    # AdamW learning rate
    lr: float = ranged(5e-4, 1e-08, 1.0)
    # reward-weighted term only: draw its timesteps from [t_low * T, T); 0 = all (paper) - 0.8
    t_low: float = ranged(0.0, 0.0, 0.99)
    # probability of an empty caption, per image (keeps classifier-free guidance's
    # unconditional branch trained, as in pre-training)
    p_uncond: float = ranged(0.3, 0.0, 0.99)
    # EMA decay of the written weights
    ema: float = ranged(0.99, 0.0, 0.99999)
    # accelerate mixed precision: no | fp16 | bf16 (GPU)
    mixed_precision: str = "no"
    # trade compute for UNet activation memory (SD scale)
    gradient_checkpointing: bool = False
    # which UNet weights learn: "all" | "cross_attention" (the text-to-image attention, attn2, and the
    # text embedding added to the timestep's: where a prompt's words meet the image; the convolutions
    # that draw shapes stay as pre-trained) | "all_but_convs" (all but the 3x3 convolutions: half
    # the tiny UNet) | "all_but_convs_and_time" (and not the timestep embedding either: a file git
    # stores as a delta of the base's; docs/findings.md A.4). Ignored with lora_rank > 0
    train: str = "all"
    # 0 = train the whole UNet (the tiny model); 4 - 64 = train only a LoRA adapter of this rank (SD: 8)
    lora_rank: int = ranged(0, 0, 1024)
    # LoRA scale numerator, the update is scaled by alpha / rank; 0 = the rank (scale 1, diffusers' default)
    lora_alpha: float = ranged(0.0, 0.0, 4096.0)
    # bitsandbytes' 8-bit AdamW (CUDA only): optimizer state 2 B/param instead of 8; pays off for full SD fine-tuning
    use_8bit_adam: bool = False
    # images per frozen VAE / text-encoder call when caching D_model; 1 - 1_024 (8 for SD at 512 px on 16 GB)
    encode_batch: int = ranged(256, 1, 65_536)
    # steps between checkpoints in OUT/checkpoint: the same command run again resumes from the last one, bit for bit;
    # 0 = never
    checkpoint_every: int = ranged(100, 0, 1_000_000)
    # comma-separated steps after which the EMA weights are also written as a pipeline folder
    # OUT/step{n} (the checkpoints of an over-optimisation curve, t2idemo.overopt); "" = none
    save_at: str = ""
    # seeds noise, timesteps and batches
    seed: int = seed_field()

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        choices = {
            "weight": ("reward", "label"),
            "method": ("reward", "dpo"),
            "balance": ("none", "category", "sqrt"),
            "mixed_precision": ("no", "fp16", "bf16"),
            "train": ("all", "cross_attention", "all_but_convs", "all_but_convs_and_time"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; use one of {allowed}")
        # reward=None: a round of the main job sets it (runconfig.round_configs); "" means no reward model
        if self.weight == "reward" and self.reward == "":
            raise ValueError("weight='reward' needs reward=<reward model folder>; or use weight='label'")
        if self.unlabelled and self.reward == "":
            raise ValueError(f"unlabelled={self.unlabelled!r} needs a reward model to weight it (reward=...)")
        bad = [n for n in self.save_at_list() if not 1 <= n <= self.train_steps]
        if bad:
            raise ValueError(f"save_at={self.save_at!r}: steps {bad} are outside 1 - train_steps ({self.train_steps})")

    def save_at_list(self) -> list:
        return sorted(set(comma_list(self.save_at, "save_at", int)))


# ----------------------------------------------------------------------------- the loss, written out
def noised(noise_scheduler, latents, generator=None, t_low: float = 0.0) -> tuple:
    """Noise the latents (B, 4, h, w) to a random t in [t_low * T, T): (x_t, t, the UNet's target), noise then t
    drawn from ``generator``."""
    B = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)  # (B, 4, h, w) eps
    T = noise_scheduler.config.num_train_timesteps
    t = torch.randint(int(t_low * T), T, (B,), generator=generator, device="cpu").to(latents.device)  # (B,) timesteps
    x_t = noise_scheduler.add_noise(latents, noise, t)  # (B, 4, h, w) sqrt(ab) x0 + sqrt(1 - ab) eps
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise  # SD v1.5: predict eps
    else:
        target = noise_scheduler.get_velocity(latents, noise, t)  # v = sqrt(ab) eps - sqrt(1 - ab) x0
    return x_t, t, target


def denoising_loss(unet, noise_scheduler, latents, text_emb, generator=None, t_low: float = 0.0) -> torch.Tensor:
    """Per-example denoising loss (B,): noise the latents to a random t in [t_low * T, T), predict, compare."""
    x_t, t, target = noised(noise_scheduler, latents, generator, t_low)  # (B, 4, h, w), (B,), (B, 4, h, w)
    pred = unet(x_t, t, text_emb).sample  # (B, 4, h, w)
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)


def reward_weighted_loss(
    unet,
    noise_scheduler,
    model_latents,
    model_emb,
    weights,
    pre_latents,
    pre_emb,
    beta,
    generator=None,
    t_low: float = 0.0,
) -> tuple:
    """Lee et al. eq. 2: E_model[w * loss] + beta * E_pre[loss]. Returns (total, model term, pre term).
    D_model's and D_pre's rows go through the UNet in one call: the same draws and losses as two calls, and
    faster on a CPU (one batch of B + P instead of two)."""
    B = model_latents.shape[0]
    x_t, t, target = noised(noise_scheduler, model_latents, generator, t_low)  # D_model: t from [t_low * T, T)
    emb = model_emb  # (B, L, D)
    if beta > 0:  # D_pre's rows follow D_model's: t from [0, T)
        x_p, t_p, y_p = noised(noise_scheduler, pre_latents, generator)
        x_t, t, target, emb = (torch.cat(pair) for pair in ((x_t, x_p), (t, t_p), (target, y_p), (emb, pre_emb)))
    pred = unet(x_t, t, emb).sample  # (B [+ P], 4, h, w)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B [+ P],)
    l_model = (weights * loss[:B]).mean()  # reward-weighted: a bad image (w ~ 0) teaches nothing
    if beta == 0:
        return l_model, l_model.detach(), torch.zeros(())
    l_pre = loss[B:].mean()  # (,) the plain loss on pre-training data
    return l_model + beta * l_pre, l_model.detach(), l_pre.detach()


# ----------------------------------------------------------------------------- training
class Cancelled(RuntimeError):
    """``should_stop`` said stop: the fine-tune ended early and wrote nothing."""


def finetune(cfg: FinetuneConfig, should_stop=None) -> str:
    """Fine-tune ``cfg.model`` and write a StableDiffusionPipeline folder to ``cfg.out`` (D_model weighted by the
    reward model in ``cfg.reward``, if any).
    ``should_stop``: a function checked before every step (the app's Cancel button); when it returns True the
    fine-tune raises ``Cancelled`` and writes no pipeline."""
    from accelerate import Accelerator

    require_set(cfg)  # the folders a round of the main job sets
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    torch.manual_seed(cfg.seed)
    pipe = load_pipeline(cfg.model, device="cpu", dtype=torch.float32)  # accelerate moves what trains
    noise_scheduler = train_scheduler(cfg.model, pipe)
    prior = world.read_prior(cfg.model) if os.path.isdir(cfg.model) else "laion"  # what the base learnt from

    # the data, encoded once: D_model's rows (DPO: pairs of them), then a fixed D_pre's if pre_pool > 0
    images, prompts, weights, categories, pairs = d_model(cfg)  # weights (N,); pairs: DPO's, else None
    encoder = FrozenEncoders(pipe, accelerator.device, cfg.encode_batch)
    use_pre = cfg.method == "reward" and cfg.beta > 0  # Diffusion-DPO's reference takes D_pre's place
    pooled = use_pre and cfg.pre_pool > 0  # else fresh D_pre renders, drawn and encoded every step
    # D_pre: a pool is data every process shares; fresh renders differ per process
    pre = PretrainStream(
        cfg.pretrain_data, cfg.seed + (0 if pooled else SEED_STRIDE * accelerator.process_index), prior
    )
    pool = pre.pool(min(cfg.pre_pool, cfg.train_steps * cfg.pre_batch)) if pooled else None
    data = cached_dataset(encoder, images, prompts, weights, pairs, pool)  # batches come named: Batch or Pairs

    # the training step, chosen once: Diffusion-DPO against the frozen base, or Lee et al.'s reward-weighted loss
    if cfg.method == "dpo":
        ref_unet = (
            copy.deepcopy(pipe.unet).requires_grad_(False).eval().to(accelerator.device)
        )  # the model as it starts
        train_step = partial(dpo_step, ref_unet=ref_unet, beta_dpo=cfg.dpo_beta)
    else:
        train_step = partial(reward_step, cfg=cfg, encoder=encoder, pre=pre)

    # what trains (the UNet, its cross-attention or a LoRA adapter), its optimizer and EMA; resume from OUT/checkpoint
    params = trainable_params(pipe.unet, cfg)
    opt = make_optimizer(params, cfg)
    unet, opt = accelerator.prepare(pipe.unet, opt)
    ema = EMA(params, cfg.ema)  # what gets written
    ckpt = Checkpoint(accelerator, os.path.join(cfg.out, "checkpoint"), cfg, ema)
    start, streams = ckpt.load()  # 0, or the step the checkpoint was written after, and its random streams
    loader, batches = step_loader(accelerator, data, categories, cfg, start, streams)  # a batch of rows per step
    gen = torch.Generator().manual_seed(cfg.seed + SEED_STRIDE * accelerator.process_index)  # noise, t, dropout
    if streams:  # go on exactly as the checkpoint's run would have: its noise, torch's and D_pre's streams
        gen.set_state(streams["tensors"]["gen"])
        torch.set_rng_state(streams["tensors"]["torch"])
        pre.rng.setstate(random_state(streams["states"]["pre"]))
        print(f"fine-tune: resuming at step {start} of {cfg.train_steps} from {ckpt.folder}", flush=True)

    save_at = set(cfg.save_at_list())
    unet.train()
    with tqdm(
        range(start, cfg.train_steps),
        desc="finetune",
        initial=start,
        total=cfg.train_steps,
        disable=not accelerator.is_main_process,
    ) as bar:
        for step, batch in zip(bar, loader):  # this process's batch, on its device
            if should_stop is not None and should_stop():  # the app's Cancel button
                raise Cancelled(
                    f"fine-tune cancelled at step {step} of {cfg.train_steps}; nothing was written to {cfg.out}"
                )
            loss, logs = train_step(accelerator, unet, noise_scheduler, batch, gen)  # (,) and what the bar shows
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            unet.zero_grad(set_to_none=True)  # every gradient, the optimizer's and (all_but_convs) the unused ones
            ema.update(step)
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in logs.items()})
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.train_steps:
                ckpt.save(step + 1, stream_states(batches, step + 1, gen, pre, accelerator))  # a rerun resumes here
                if accelerator.is_main_process:
                    print(
                        f"fine-tune: checkpoint at step {step + 1} of {cfg.train_steps} in {ckpt.folder}", flush=True
                    )
            if step + 1 in save_at and accelerator.is_main_process:  # a pipeline of the EMA weights so far
                save_snapshot(
                    cfg.out,
                    step + 1,
                    pipe,
                    pipe.vae,
                    accelerator.unwrap_model(unet),
                    ema.weights,
                    noise_scheduler,
                    prior,
                    cfg,
                )

    # write the tuned pipeline: the EMA weights
    accelerator.wait_for_everyone()
    ema.copy_to_params()
    if accelerator.is_main_process:
        write_tuned(cfg, pipe, accelerator.unwrap_model(unet).eval(), noise_scheduler, prior, weights)
    return cfg.out


def step_loader(accelerator, data, categories: list, cfg: FinetuneConfig, start: int, streams: dict | None):
    """(A DataLoader of ``data`` with one batch of row indices for each step from ``start`` on (D_model's rows, then
    the pool's), prepared by accelerate: each process gets its own share of the batches; its batch sampler). From a
    checkpoint's ``streams`` the batches go on where the checkpoint's run was."""
    rng = random.Random(cfg.seed)
    if streams:
        rng.setstate(random_state(streams["states"]["sampler"]))
    batches = StepBatches(
        batch_sampler(categories[: data.n_model], cfg.balance, rng),
        cfg.batch,
        data.n_model,
        cfg.pre_batch,
        data.n_pre,
        rng,
        steps=(cfg.train_steps - start) * accelerator.num_processes,
        first=start * accelerator.num_processes,
    )
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=batches, collate_fn=as_batch, generator=torch.Generator().manual_seed(cfg.seed)
    )
    return accelerator.prepare(loader), batches


def stream_states(batches: StepBatches, step: int, gen, pre: PretrainStream, accelerator) -> dict:
    """This process's random streams after ``step`` steps, for a checkpoint: the batch sampler's state before the
    next step's batch (the loader has drawn a batch ahead), the noise generator's, torch's and D_pre's."""
    j = step * accelerator.num_processes  # the next step's first batch, over every process
    sampler = batches.states.get(j) or batches.rng.getstate()  # not drawn yet: the state now is the one before it
    return {
        "tensors": {"gen": gen.get_state(), "torch": torch.get_rng_state()},
        "states": {"sampler": sampler, "pre": pre.rng.getstate()},
    }


def random_state(saved: list) -> tuple:
    """A Python ``random.Random`` state read back from JSON (lists where getstate() gave tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def reward_step(accelerator, unet, noise_scheduler, batch: Batch, gen, *, cfg, encoder, pre) -> tuple:
    """Lee et al. on one batch -> (loss, what the bar shows): the reward-weighted loss on D_model's rows plus beta
    times the plain loss on D_pre's (the pool's rows, ``batch.pre``, or ``pre_batch`` fresh
    renders encoded now); each caption is dropped with probability p_uncond."""
    m_lat, m_emb, w = batch.model  # D_model: (B, 4, h, w), (B, L, D), (B,) weights in [0, 1]
    p_lat, p_emb = None, None  # D_pre: (P, 4, h, w), (P, L, D); none when beta = 0
    if batch.pre is not None:  # the pool's rows
        p_lat, p_emb = batch.pre.latents, batch.pre.text_emb
    elif cfg.beta > 0:
        p_lat, p_emb = encoder(*pre.sample(cfg.pre_batch))
    m_emb = drop_captions(m_emb, encoder.null_emb, cfg.p_uncond, gen)  # some captions -> "" (guidance's branch)
    p_emb = drop_captions(p_emb, encoder.null_emb, cfg.p_uncond, gen) if p_emb is not None else None
    with accelerator.autocast():  # the loss, written out above: D_model's noise and t from gen, then D_pre's
        loss, l_model, l_pre = reward_weighted_loss(
            unet, noise_scheduler, m_lat, m_emb, w, p_lat, p_emb, cfg.beta, gen, cfg.t_low
        )
    return loss, {"loss": loss, "model": l_model, "pre": l_pre}


def dpo_step(accelerator, unet, noise_scheduler, batch: Pairs, gen, *, ref_unet, beta_dpo: float) -> tuple:
    """Diffusion-DPO on one batch of pairs -> (loss, what the bar shows): each pair's winner against its loser,
    the trained UNet against the frozen reference (t2idemo.dpo); no D_pre, no caption dropout."""
    win, lose, emb = batch.winner, batch.loser, batch.text_emb  # (B, 4, h, w) twice, (B, L, D): finetune_data.Pairs
    with accelerator.autocast():
        loss, implicit_acc = dpo_loss(unet, ref_unet, noise_scheduler, win, lose, emb, beta_dpo, gen)
    return loss, {"loss": loss, "implicit_acc": implicit_acc}


def drop_captions(emb, null_emb, p_uncond: float, gen) -> torch.Tensor:
    """Replace each caption (B, L, D) by the empty one (1, L, D) with probability p_uncond: keeps classifier-free
    guidance's unconditional branch trained, as in pre-training."""
    drop = torch.rand(emb.shape[0], generator=gen) < p_uncond  # (B,)
    return torch.where(drop[:, None, None].to(emb.device), null_emb.to(emb.dtype), emb)


def d_model(cfg: FinetuneConfig) -> tuple:
    """D_model: (images, prompts, weights (N,), categories, None), or for Diffusion-DPO every image, ones (P,), the
    pairs' categories and (winners (P,), losers (P,)). The reward model ``cfg.reward`` (if any) weights them."""
    reward_fn = None
    if cfg.reward:
        from .reward import load_reward_fn

        reward_fn = load_reward_fn(cfg.reward)
    if cfg.method == "dpo":
        return dpo_dataset(cfg, reward_fn)
    return (*model_dataset(cfg, reward_fn), None)


def parse_args(argv=None) -> FinetuneConfig:
    from .config import parse_config

    return parse_config(FinetuneConfig, argv, prog="python -m t2idemo finetune", description=__doc__.split("\n\n")[0])


def finetune_main(argv=None):
    finetune(parse_args(argv))


if __name__ == "__main__":
    finetune_main()
