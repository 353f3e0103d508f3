"""What the fine-tune trains, and with what: the whole UNet, only its cross-attention, or a LoRA adapter (SD scale),
and the optimizer (AdamW, or bitsandbytes' 8-bit AdamW). ``cfg`` is a ``finetune.FinetuneConfig`` (its lora_rank,
lora_alpha, mixed_precision, lr and use_8bit_adam fields).
"""

from __future__ import annotations

import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as in diffusers' LoRA script
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: pipe.load_lora_weights(OUT) finds it


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
    unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
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
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, weight_name=LORA_FILE,
                                              unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    unet.fuse_lora()
    unet.unload_lora()


def make_optimizer(params, cfg):
    """AdamW, or bitsandbytes' 8-bit AdamW when ``cfg.use_8bit_adam`` (imported only then)."""
    if not cfg.use_8bit_adam:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError("use_8bit_adam=True needs bitsandbytes and a CUDA GPU: pip install bitsandbytes; "
                          "or leave use_8bit_adam off") from None
    return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=1e-2)
