"""Stable Diffusion scale: the paper's prompt set, tiny random stand-ins for tests, and the plan for a 16 GB GPU.

The library code is the same at both scales: ``generate`` draws from any StableDiffusionPipeline, ``reward``
wraps any CLIPModel, ``finetune`` tunes any SD 1.x / 2.x UNet. What changes at SD scale is given here:

    python -m t2idemo generate --prompt-set sd --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --max-prompts 500 --per-prompt 4 --sample-steps 30 --guidance 7.5 --batch 8 --out data/sd_feedback
    python -m t2idemo generate --prompt-set sd --split unseen --seed 1 ... --max-prompts 100 --out data/sd_heldout
    # label both in a notebook (t2idemo.labeling.Labeler), then labels.export_labels(folder) for each
    python -m t2idemo reward train --data data/sd_feedback --eval-data data/sd_heldout \\
        --clip openai/clip-vit-large-patch14 --run runs/sd_reward
    python -m t2idemo finetune --model stable-diffusion-v1-5/stable-diffusion-v1-5 --data data/sd_feedback \\
        --reward runs/sd_reward --pretrain-data data/sd_pretrain --lora-rank 8 --mixed-precision fp16 \\
        --gradient-checkpointing --batch 4 --pre-batch 4 --encode-batch 8 --train-steps 2000 --out runs/sd_aligned
    # draw the held-out prompts again from runs/sd_aligned (same seeds), label them, then per category:
    python -m t2idemo evaluate summary --data data/sd_aligned_heldout --reward runs/sd_reward  # labels + mean reward

Prompts (``make_prompt``, ``all_prompts``), in the paper's four categories and wording (Lee et al. 2023):

    count        "two dogs"                       names count + object          counts one to five
    color        "a green colored dog"            names colour + object
    background   "a dog in the forest"            names object + background
    combination  "two blue dogs in the forest"    names count + colour + object + background

The word lists (``OBJECTS``, ``COLORS``, ``BACKGROUNDS``) and the held-out split are this kit's choice in the
paper's spirit; the paper's own prompt list is not reproduced. Prompts that name a held-out pair or triple
(``HELDOUT_*``) are the "unseen" evaluation set; feedback is collected on the others. Metadata rows carry
``category, named, count, color, object, background, unseen`` and ``prompt_set: "sd"``. This module implements
the prompt-set interface of ``t2idemo.prompts`` (as ``world`` does for the shapes world), which is how
``reward_train`` picks this vocabulary for its prompt-classification swaps.

Labels. The judge reads only the shapes world, so at SD scale labels come from people (the label store and
the widget), and evaluation uses those labels and the reward model (``label_summary.summary``). No open-vocabulary
detector is wired in as an automatic rater.

Memory plan for a 16 GB T4 (SD v1.5, 512 px, LoRA). Parameter counts are exact (SD v1.5's architecture,
built from its config on the meta device); the activation figures are estimates, NOT measured, since no
GPU and no SD weights were available where this was written:

    frozen UNet, cast to fp16 (859.5 M params)                           1.72 GB
    frozen text encoder, fp32 (123.1 M)  + VAE, fp32 (83.7 M)            0.83 GB
    LoRA rank 8 on to_q/to_k/to_v/to_out.0 (1.59 M params, fp32)
        weights + grads + AdamW states (16 B/param)                      0.03 GB
    UNet activations, fp16 autocast, gradient checkpointing,
        batch 4 (D_model) + pre_batch 4 (D_pre) = 8 latents of 64x64      ~3-5 GB (estimate)
    VAE encoding of 4-8 images at 512 px (fp32, no grad, transient)      ~2-4 GB (estimate)
    CUDA context, allocator slack                                        ~1 GB
    peak (training step or VAE encoding, whichever is larger)           ~7-9 GB of 15 GB usable

- Resolution: 512 px, SD v1.5's native size (the UNet's sample_size x the VAE factor; SD 2.x 768-v: 768 px).
- Mixed precision: fp16 on a T4 (it has no bf16); bf16 on A100 / L4 / H100. The frozen base is stored in
  the half type and the LoRA weights stay fp32, as diffusers' train_text_to_image_lora.py does.
- Rank 8 (0.2 M parameters per unit of rank: 4 -> 0.80 M, 8 -> 1.59 M, 64 -> 12.75 M).
- 8-bit Adam (bitsandbytes) stores the optimizer state in 2 B/param instead of 8: 10 MB saved at rank 8, so
  it is off by default for LoRA. It matters for full fine-tuning (lora_rank 0), where AdamW's fp32 states
  alone take 6.9 GB (1.7 GB in 8 bits) next to 3.4 GB of fp32 weights and 3.4 GB of gradients; full
  fine-tuning of SD on 16 GB is not part of this plan.
- If a T4 runs out of memory: halve batch and pre_batch first, then encode_batch. SD 2.x at 768 px has
  2.25x the latent pixels: start from batch 2 + pre_batch 2.
- CPU RAM: the feedback images stay loaded (0.75 MB per 512-px image) next to their cached latents and
  text embeddings (0.3 MB per image): about 2 GB for 2,000 images, within Colab's 12 GB.
- Generation: fp16 pipeline (2.1 GB), batch_size 8 with guidance. Reward: CLIP ViT-L/14 in fp32 (1.7 GB).

What was run. Every stage, through the library functions above, on tiny randomly initialised SD and CLIP
models with SD v1.5's classes and scheduler settings (``build_tiny_sd``, ``build_tiny_clip``; the tests
``tests/test_sd_scale.py`` and ``tests/test_no_network.py``), on a CPU. Nothing ran at full scale: not SD
v1.5, not CLIP ViT-L/14, no GPU, no human labels at SD scale, no memory measurement.
"""

from __future__ import annotations

import functools
import json
import os
import random
import string
from dataclasses import dataclass

from . import world
from .config import check_ranges, ranged, seed_field

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # the hub id of SD v1.5 (diffusers layout)
CLIP_L14 = "openai/clip-vit-large-patch14"  # the reward backbone at SD scale (the text tower of SD v1.5)

# ----------------------------------------------------------------------------- vocabulary
OBJECTS = ("dog", "cat", "lion", "orange", "vase", "cup", "apple", "chair", "bird", "cake", "bicycle", "tree")
PLURALS = {o: o + "s" for o in OBJECTS}  # every object here takes a plain "s"
COLORS = ("red", "yellow", "green", "blue", "black", "pink", "purple", "white", "brown")
BACKGROUNDS = {  # background -> its phrase in a prompt
    "forest": "in the forest",
    "city": "in the city",
    "moon": "on the moon",
    "beach": "on the beach",
    "desert": "in the desert",
    "snow": "in the snow",
}
COUNTS = (1, 2, 3, 4, 5)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
NAME = "sd"  # the prompt set's name in dataset rows ("prompt_set") and in generate --prompt-set
JUDGE = False  # no programmatic judge reads photos: people label (t2idemo.prompts)
CATEGORIES = ("count", "color", "background", "combination")
ATTRIBUTES = ("count", "color", "object", "background")
NAMED = {  # the attributes each category names (the object is always named: it is the prompt's noun)
    "count": ("count", "object"),
    "color": ("color", "object"),
    "background": ("object", "background"),
    "combination": ("count", "color", "object", "background"),
}

# ----------------------------------------------------------------------------- held-out split
# Pairs and triples that never appear in feedback prompts; prompts naming one are the "unseen" set.
HELDOUT_COLOR_OBJECT = {
    ("blue", "dog"),
    ("pink", "lion"),
    ("green", "cup"),
    ("white", "cake"),
    ("brown", "bicycle"),
    ("purple", "apple"),
}
HELDOUT_COUNT_OBJECT = {(3, "dog"), (2, "vase"), (4, "bird"), (5, "apple")}
HELDOUT_OBJECT_BACKGROUND = {("cat", "moon"), ("chair", "beach"), ("tree", "city"), ("lion", "snow")}
HELDOUT_COUNT_COLOR_BACKGROUND = {
    (2, "red", "forest"),
    (3, "blue", "moon"),
    (4, "white", "city"),
    (5, "black", "beach"),
    (2, "yellow", "desert"),
    (3, "pink", "snow"),
}


def is_unseen(meta: dict) -> bool:
    """True if the prompt names a held-out combination (the paper's unseen prompts)."""
    named = set(meta["named"])
    c, col, obj, bg = meta.get("count"), meta.get("color"), meta.get("object"), meta.get("background")
    return (
        ({"color", "object"} <= named and (col, obj) in HELDOUT_COLOR_OBJECT)
        or ({"count", "object"} <= named and (c, obj) in HELDOUT_COUNT_OBJECT)
        or ({"object", "background"} <= named and (obj, bg) in HELDOUT_OBJECT_BACKGROUND)
        or ({"count", "color", "background"} <= named and (c, col, bg) in HELDOUT_COUNT_COLOR_BACKGROUND)
    )


# ----------------------------------------------------------------------------- prompts
def check_attributes(count=None, color=None, object=None, background=None) -> None:
    """Raise a ValueError that names the bad argument and what is allowed."""
    allowed = {"count": COUNTS, "color": COLORS, "object": OBJECTS, "background": tuple(BACKGROUNDS)}
    for name, value in (("count", count), ("color", color), ("object", object), ("background", background)):
        if value is not None and value not in allowed[name]:
            raise ValueError(f"{name}={value!r} is not allowed; use one of {allowed[name]}")


def text(category: str, count, color, object, background) -> str:
    """The English of a prompt, in the paper's wording."""
    noun = object if count == 1 else PLURALS[object]
    if category == "count":
        return f"{COUNT_WORDS[count]} {noun}"
    if category == "color":
        return f"a {color} colored {object}"
    if category == "background":
        return f"{'an' if object[0] in 'aeiou' else 'a'} {object} {BACKGROUNDS[background]}"
    return f"{COUNT_WORDS[count]} {color} {noun} {BACKGROUNDS[background]}"


def make_prompt(category: str, count=None, color=None, object=None, background=None) -> tuple[str, dict]:
    """Build the prompt of ``category`` from the attributes it names. Returns ``(prompt, metadata)``;
    attributes the category does not name are None in the metadata (a colour or background prompt asks
    for one object, so its count is 1)."""
    if category not in NAMED:
        raise ValueError(f"category={category!r} is not one of {CATEGORIES}")
    values = {"count": count, "color": color, "object": object, "background": background}
    for a in NAMED[category]:
        if values[a] is None:
            raise ValueError(f"a {category!r} prompt needs {a}=..., got None")
    check_attributes(**values)
    meta = {"category": category, "named": list(NAMED[category])}
    meta.update({a: values[a] if a in NAMED[category] else None for a in ATTRIBUTES})
    if category in ("color", "background"):
        meta["count"] = 1
    meta["unseen"] = is_unseen(meta)
    return text(category, meta["count"], meta["color"], object, meta["background"]), meta


@functools.cache
def _category_prompts(category: str) -> tuple:
    """Every distinct prompt of one category, in a fixed shuffled order (seed 0)."""
    out, seen = [], set()
    for c in COUNTS:
        for col in COLORS:
            for obj in OBJECTS:
                for bg in BACKGROUNDS:
                    p, meta = make_prompt(category, count=c, color=col, object=obj, background=bg)
                    if p not in seen:
                        seen.add(p)
                        out.append((p, meta))
    random.Random(0).shuffle(out)
    return tuple(out)


def all_prompts(category: str | None = None, unseen: bool | None = None) -> list[tuple[str, dict]]:
    """Every distinct prompt (optionally of one category / split). The categories take turns (count, color,
    background, combination, count, ...) and each is in a fixed shuffled order, so the first N prompts
    (``generate --max-prompts N``) are a balanced sample; the small categories run out first.
    Sizes: count 60, color 108, background 72, combination 3,240."""
    if category is not None and category not in NAMED:
        raise ValueError(f"category={category!r} is not one of {CATEGORIES}")
    lists = [
        [(p, dict(m)) for p, m in _category_prompts(cat) if unseen is None or m["unseen"] == unseen]
        for cat in ([category] if category else CATEGORIES)
    ]
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


@functools.cache
def _by_text() -> dict:
    return {p: m for cat in CATEGORIES for p, m in _category_prompts(cat)}


def parse_prompt(prompt: str) -> dict:
    """Read a prompt of this grammar back into metadata (the inverse of ``make_prompt``)."""
    meta = _by_text().get(" ".join(prompt.strip().lower().split()))
    if meta is None:
        raise ValueError(
            f"prompt={prompt!r} is not in the SD-scale prompt set: write it like 'two dogs', "
            f"'a green colored dog', 'a dog in the forest' or 'two blue dogs in the forest', with "
            f"counts {tuple(COUNT_WORDS.values())}, colours {COLORS}, objects {OBJECTS} and "
            f"backgrounds {tuple(BACKGROUNDS.values())}"
        )
    return dict(meta)


def in_grammar(row: dict) -> bool:
    """True if the row's prompt is exactly what ``make_prompt`` writes for its category and attributes."""
    return world.in_grammar(row, make_prompt, ATTRIBUTES)


def perturbations(meta: dict, include_unseen: bool = False) -> list[str]:
    """Every prompt of the same category that differs from ``meta``'s in exactly one named attribute (the same
    rule as the shapes world's, over this vocabulary); held-out combinations only with ``include_unseen``."""
    vocab = {"count": COUNTS, "color": COLORS, "object": OBJECTS, "background": tuple(BACKGROUNDS)}
    return world.perturbations(meta, include_unseen, make_prompt, vocab)


# ----------------------------------------------------------------------------- tiny random stand-ins
# SD v1.5's classes and scheduler settings at toy sizes, randomly initialised, built from configs the way
# diffusers' own tests build them. They make every stage runnable in seconds on a CPU with no download:
# for the tests, and for a dry run of a Colab setup (`python -m t2idemo sd tiny --out /tmp/tiny`).
TINY_WIDTH = 32  # hidden width of the tiny text towers, the UNet's cross-attention and its first block
TINY_TOKENS = 77  # token length, as in SD v1.5 (a character-level tokenizer needs the room)


def tiny_tokenizer(max_length: int = TINY_TOKENS):
    """A character-level CLIPTokenizer: every lowercase letter is a token, so any prompt of this set (or the
    shapes world) tokenizes without unknown words; other characters map to <|endoftext|>, as in CLIP."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _text_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=TINY_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=TINY_WIDTH,
    )


def build_tiny_sd(path: str, seed: int = 0, image_size: int = 32) -> str:
    """Write a random StableDiffusionPipeline folder to ``path``: SD v1.5's component classes (CLIP text
    encoder, AutoencoderKL with 4 latent channels, UNet2DConditionModel with cross-attention) at toy widths,
    and SD v1.5's PNDM scheduler settings (epsilon prediction, scaled-linear betas). ``image_size`` (pixels,
    a multiple of 8) is twice the UNet's latent size. Returns ``path``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size % 8 or image_size < 16:
        raise ValueError(f"image_size={image_size!r} is not allowed; use a multiple of 8, at least 16")
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_WIDTH,
        attention_head_dim=(2, 4),
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=image_size,
    )  # one downsampling: latents are image_size / 2
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tok.get_vocab()))))
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )  # SD v1.5's scheduler_config.json
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_clip(path: str, seed: int = 0, image_size: int = 32) -> str:
    """Write a random CLIPModel folder to ``path`` (model, tokenizer, preprocessor_config.json): the layout
    of ``openai/clip-vit-large-patch14``, at toy widths and ``image_size`` pixels instead of 224. Returns ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    vision = dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=TINY_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    model = CLIPModel(
        CLIPConfig(text_config=_text_config(len(tok.get_vocab())), vision_config=vision, projection_dim=TINY_WIDTH)
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    preprocess = {  # CLIP ViT-L/14's preprocessing at this size: bicubic resize, centre crop, OpenAI's normalisation
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "do_convert_rgb": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
    }
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(preprocess, f, indent=2)
    return path


# ----------------------------------------------------------------------------- CLI
@dataclass
class TinyConfig:
    # folder that receives tiny-sd/ and tiny-clip/ (random weights, for a dry run)
    out: str = "runs/tiny"
    # seeds the random weights
    seed: int = seed_field()
    # pixels of the tiny pipeline's images and the tiny CLIP's input; 16 - 128, a multiple of 8
    image_size: int = ranged(32, 16, 128)

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.image_size % 8:
            raise ValueError(f"image_size={self.image_size!r} is not a multiple of 8 (the VAE downsamples by 8)")


def main(argv=None):
    import sys

    from .config import parse_config

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("tiny", "prompts"):
        print(
            "usage: python -m t2idemo sd {tiny | prompts} [options]\n"
            "  tiny     write random tiny SD + CLIP folders for a dry run of every stage\n"
            "  prompts  print the prompt set's sizes per category and split\n"
            "(the per-category good rate and mean reward of a labelled set: python -m t2idemo evaluate summary)"
        )
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "tiny":
        cfg = parse_config(TinyConfig, argv[1:], prog="python -m t2idemo sd tiny")
        sd_dir = build_tiny_sd(os.path.join(cfg.out, "tiny-sd"), cfg.seed, cfg.image_size)
        clip_dir = build_tiny_clip(os.path.join(cfg.out, "tiny-clip"), cfg.seed, cfg.image_size)
        print(
            f"wrote {sd_dir} and {clip_dir}; try: python -m t2idemo generate --prompt-set sd --model {sd_dir} "
            f"--max-prompts 8 --sample-steps 2 --out {os.path.join(cfg.out, 'data')}"
        )
    else:
        for cat in CATEGORIES:
            print(
                f"{cat:<12} seen {len(all_prompts(cat, unseen=False)):>5}  "
                f"unseen {len(all_prompts(cat, unseen=True)):>5}"
                f"  e.g. {all_prompts(cat)[0][0]!r}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
