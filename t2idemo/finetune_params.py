"""What the fine-tune trains, and with what: the whole UNet, all of it but its 3x3 convolutions, only its
cross-attention, or a LoRA adapter (SD scale), the optimizer (AdamW, or bitsandbytes' 8-bit AdamW), the EMA of the
trained weights, and the checkpoint that holds them all (OUT/checkpoint, through accelerate's ``save_state`` /
``load_state``). ``cfg`` is a ``finetune.FinetuneConfig`` (its lora_rank, lora_alpha, train, gradient_checkpointing,
mixed_precision, lr and use_8bit_adam fields; the whole of it goes into the checkpoint's state.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil

import numpy as np
import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as in diffusers' LoRA script
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: pipe.load_lora_weights(OUT) finds it
WEIGHT_DECAY = 1e-2  # AdamW's decoupled weight decay (torch's default), on whatever trains
TRAINABLE_FILE = "trainable.safetensors"  # a checkpoint's trained weights (only those: a LoRA adapter is a few MB)


def trainable_params(unet, cfg) -> list:
    """Choose what trains (a LoRA adapter, the cross-attention, all but the 3x3 convolutions, or the whole UNet)
    and return those parameters."""
    if cfg.lora_rank:
        add_lora(unet, cfg)  # freezes the UNet: only the adapter trains
    elif cfg.train == "cross_attention":
        freeze_all_but_cross_attention(unet)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return [p for _, p in trained_parameters(unet, cfg)]


def trained_parameters(unet, cfg) -> list:
    """(name, parameter) for every weight the fine-tune updates, in the UNet's order. That is every weight that
    requires a gradient, except under train='all_but_convs': there the spatial (3x3) convolutions, the kernels
    that draw (about half the tiny UNet's weights), stay as pre-trained and the rest learns (attention,
    feed-forward, norms, 1x1 projections, time and text embeddings), so the tuned file repeats half of its base's
    bytes. train='all_but_convs_and_time' also keeps the timestep embedding's MLP: under half the file's bytes then
    change, which git needs to store it as a delta of its base's (docs/findings.md A.4). Frozen weights still get
    gradients, unused: freezing them with requires_grad made torch 2.13's CPU backward segfault in the fine-tune."""
    named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if cfg.train in ("all_but_convs", "all_but_convs_and_time") and not cfg.lora_rank:
        kernels = {
            f"{m_name}.{p_name}"
            for m_name, m in unet.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
            for p_name, _ in m.named_parameters()
        }
        named = [(n, p) for n, p in named if n not in kernels]
    if cfg.train == "all_but_convs_and_time" and not cfg.lora_rank:
        # the timestep's MLP too (82,432 weights of the tiny UNet): what brings the changed bytes under half the file
        named = [(n, p) for n, p in named if not n.startswith("time_embedding.")]
    return named


def add_lora(unet, cfg) -> None:
    """Freeze ``unet`` and attach a trainable peft LoRA adapter of rank ``cfg.lora_rank`` (B starts at 0, so
    the model starts as the base model). Under fp16/bf16 mixed precision the frozen weights are stored in
    that type (half the memory); the adapter stays float32, which fp16 gradient scaling needs."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("lora_rank > 0 needs peft: pip install peft") from None
    unet.requires_grad_(False)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
    if half is not None:
        for p in unet.parameters():
            p.data = p.data.to(half)
    unet.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or cfg.lora_rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
    )
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def freeze_all_but_cross_attention(unet) -> None:
    """Train only where the prompt enters the UNet: every cross-attention block (attn2: queries from the image,
    keys and values from the text) and, if the UNet has one, the text embedding added to the timestep embedding."""
    unet.requires_grad_(False)
    for name, p in unet.named_parameters():
        if ".attn2." in name or name.startswith("add_embedding."):
            p.requires_grad_(True)
    if not any(p.requires_grad for p in unet.parameters()):
        raise ValueError("train='cross_attention': this UNet has no cross-attention (attn2) layers; use train='all'")


def save_lora(unet, out: str) -> None:
    """Write the adapter to OUT/pytorch_lora_weights.safetensors in diffusers' format (rank and alpha in its
    metadata), then fuse it into ``unet`` and remove the peft layers, leaving a plain UNet2DConditionModel."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        out,
        unet_lora_layers=layers,
        weight_name=LORA_FILE,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    unet.fuse_lora()
    unet.unload_lora()


def make_optimizer(params, cfg):
    """AdamW, or bitsandbytes' 8-bit AdamW when ``cfg.use_8bit_adam`` (imported only then)."""
    if not cfg.use_8bit_adam:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError(
            "use_8bit_adam=True needs bitsandbytes and a CUDA GPU: pip install bitsandbytes; "
            "or leave use_8bit_adam off"
        ) from None
    return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)


class EMA:
    """Exponential moving average of the trained parameters, with a warm-up: what the fine-tune writes (the base
    model was trained and saved the same way). ``decay`` 0 turns it off (the weights themselves)."""

    def __init__(self, params: list, decay: float):
        self.params, self.decay = params, decay
        self.weights = [p.detach().clone() for p in params]  # one tensor per trained parameter

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: the first steps average over fewer
        for e, p in zip(self.weights, self.params):
            e.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for e, p in zip(self.weights, self.params):
            p.copy_(e)

    def state_dict(self) -> dict:
        return {str(i): e.cpu().contiguous() for i, e in enumerate(self.weights)}

    def load_state_dict(self, saved: dict) -> None:
        self.weights = [saved[str(i)].to(p) for i, p in enumerate(self.params)]


# ----------------------------------------------------------------------------- checkpoints: OUT/checkpoint
# accelerator.save_state writes the optimizer (optimizer.bin), the RNG states (random_states_<k>.pkl) and, under fp16,
# the gradient scaler (scaler.pt) with torch.save; load_state reads them back with torch.load(weights_only=True):
# tensors and plain containers only, no pickled code runs. The UNet's trained weights go through the two hooks below
# (safetensors), the EMA and the step beside them (ema.safetensors, state.json): nothing is registered with
# register_for_checkpointing, whose custom_checkpoint_<i>.pkl load_state would unpickle with weights_only=False.
class Checkpoint:
    """OUT/checkpoint: everything a fine-tune needs to go on after some step exactly as if it had not stopped: the
    trained weights and the optimizer (accelerate's ``save_state``), the EMA, and each process's random streams
    (the batch order's, the noise generator's, torch's and D_pre's). Only the UNet's trained weights are stored,
    not the whole model (the frozen SD UNet is 1.7 GB): the two hooks below take the model's place, as in
    diffusers' train_text_to_image_lora.py. A checkpoint is written to OUT/checkpoint.tmp and then swapped in, so
    a kill during a save leaves the previous checkpoint whole."""

    def __init__(self, accelerator, folder: str, cfg, ema: EMA):
        self.accelerator, self.folder, self.cfg, self.ema = accelerator, folder, cfg, ema
        accelerator.register_save_state_pre_hook(self.save_trainable)
        accelerator.register_load_state_pre_hook(self.load_trainable)

    def save(self, step: int, streams: dict) -> None:
        """Write the checkpoint after ``step`` steps (every process calls it), with this process's ``streams``:
        {"tensors": {name: tensor}, "states": {name: Python Random state}}."""
        from safetensors.torch import save_file

        acc, tmp, rank = self.accelerator, self.folder + ".tmp", self.accelerator.process_index
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # what a kill during an earlier save left
        acc.wait_for_everyone()
        acc.save_state(tmp)
        save_file(streams["tensors"], os.path.join(tmp, f"streams_{rank}.safetensors"))
        with open(os.path.join(tmp, f"streams_{rank}.json"), "w") as f:
            json.dump(streams["states"], f)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_file(self.ema.state_dict(), os.path.join(tmp, "ema.safetensors"))
            with open(os.path.join(tmp, "state.json"), "w") as f:  # written last: a tmp without it is incomplete
                json.dump({"step": step, "config": dataclasses.asdict(self.cfg)}, f)
            old = self.folder + ".old"
            if os.path.isdir(self.folder):
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)  # the swap: OUT/checkpoint is always a whole checkpoint, or .old is
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(self) -> tuple[int, dict | None]:
        """Resume: load the trained weights, the optimizer and the EMA if the folder holds a checkpoint; return (the
        step it was written after, this process's streams) ((0, None) when there is none)."""
        from safetensors.torch import load_file

        if not os.path.isfile(os.path.join(self.folder, "state.json")) and os.path.isdir(self.folder + ".old"):
            os.replace(self.folder + ".old", self.folder)  # a kill between the swap's two renames
        if not os.path.isfile(os.path.join(self.folder, "state.json")):
            return 0, None
        with open(os.path.join(self.folder, "state.json")) as f:
            state = json.load(f)
        rank, cfg = state["config"].get("lora_rank", 0), self.cfg
        if rank != cfg.lora_rank:
            raise ValueError(
                f"out={cfg.out!r} holds a checkpoint trained with lora_rank={rank}, now lora_rank="
                f"{cfg.lora_rank}; use the same rank or a new out folder"
            )
        me = self.accelerator.process_index
        streams_file = os.path.join(self.folder, f"streams_{me}.safetensors")
        if not os.path.isfile(os.path.join(self.folder, "optimizer.bin")) or not os.path.isfile(streams_file):
            raise ValueError(
                f"{self.folder} holds a checkpoint of an older t2idemo; delete it to start the fine-tune over"
            )
        with kept_rng_states(self.accelerator.device):  # the streams below, not accelerate's pickled ones
            self.accelerator.load_state(self.folder, load_kwargs={"weights_only": True})
        self.ema.load_state_dict(load_file(os.path.join(self.folder, "ema.safetensors")))
        with open(os.path.join(self.folder, f"streams_{me}.json")) as f:
            states = json.load(f)
        return state["step"], {"tensors": load_file(streams_file), "states": states}

    def save_trainable(self, models: list, weights: list, folder: str) -> None:
        """save_state's hook: the UNet's trained weights to trainable.safetensors, and no model.safetensors."""
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            unet = self.accelerator.unwrap_model(models[0])
            named = {n: p.detach().cpu().contiguous() for n, p in trained_parameters(unet, self.cfg)}
            save_file(named, os.path.join(folder, TRAINABLE_FILE))
        weights.pop()

    def load_trainable(self, models: list, folder: str) -> None:
        """load_state's hook: the UNet's trained weights from trainable.safetensors (the model popped: accelerate
        loads no model.safetensors)."""
        from safetensors.torch import load_file

        trainable = load_file(os.path.join(folder, TRAINABLE_FILE))
        for n, p in self.accelerator.unwrap_model(models.pop()).named_parameters():
            if n in trainable:
                p.data.copy_(trainable[n])


@contextlib.contextmanager
def kept_rng_states(device):
    """Leave the global RNGs (Python's, numpy's, torch's on the CPU and on ``device``) as they were on entry:
    ``load_state`` sets them to the checkpoint's, and a resumed fine-tune has always drawn from its own."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(py)
    np.random.set_state(npy)
