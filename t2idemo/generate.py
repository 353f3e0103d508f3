"""Stage 1a: draw images from a text-to-image pipeline (the shipped tiny one, or SD v1.5).

    python -m t2idemo sample --out grid.png              # a grid from the shipped tiny model
    python -m t2idemo generate --out data/feedback       # the labelling set: 4 images of each seen prompt

``sample`` gives every image its own seed, so any single image can be drawn again on its own.

``generate`` writes the set the paper's raters label: K images for each prompt, as PNG files next to a
``metadata.jsonl`` whose rows carry the file name, the prompt, its category and attributes, the seed, the
model and the sampler settings. That is the layout ``datasets.load_dataset("imagefolder", data_dir=DIR)``
reads. Each PNG is written to a temporary file and renamed into place, and its row is appended (and
fsynced) only after that, so a row always points at a complete image; re-running resumes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import prompts, world
from .config import check_ranges, parse_config, ranged, require_set, seed_field
from .data import METADATA, load_rows, save_png, write_rows_atomic

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
BASE_MODEL = os.path.join(ASSETS, "tiny-sd")  # the shipped base model (a StableDiffusionPipeline folder)
ALIGNED_MODEL = os.path.join(ASSETS, "tiny-sd-aligned")  # shipped: `python -m t2idemo run --preset shapes-long --ship`
DEFAULT_STEPS = 15  # DPM-Solver++ steps: the tiny model's default sampler setting
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale to look at and evaluate (docs/findings.md, 1.1)
# The feedback and unlabelled images (what the fine-tune learns from) are drawn at guidance 2 and 10 steps: tuning on
# samples drawn at a higher guidance bakes it in, and 10 steps are judged right as often as 15 (docs/findings.md)
FEEDBACK_STEPS = 10
FEEDBACK_GUIDANCE = 2.0


def load_pipeline(path: str = BASE_MODEL, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a StableDiffusionPipeline folder or hub id; never reaches the network for a local folder."""
    from diffusers import StableDiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    local = os.path.isdir(path)
    if not local and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise ValueError(f"model={path!r} is neither an existing pipeline folder nor a hub id like 'org/name'")
    pipe = StableDiffusionPipeline.from_pretrained(
        path, torch_dtype=dtype, local_files_only=local, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def sample(
    pipe,
    prompts: list,
    seeds: list,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch_size: int = 64,
    precision: str = "auto",
) -> list:
    """One image per (prompt, seed), in order. Each image's initial noise comes from its own seed.
    ``precision``: the arithmetic of the networks (``sampling_dtype``); the sampler's own steps stay float32."""
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts and seeds differ in length: {len(prompts)} != {len(seeds)}")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps={steps!r} is out of range; use 1 to 1000")
    if guidance < 0:
        raise ValueError(f"guidance={guidance!r} must be >= 0 (1 turns guidance off)")
    dtype = sampling_dtype(pipe, precision)  # bfloat16 on a CPU that has it, else None: the pipeline's own dtype
    images = []
    for i in range(0, len(prompts), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = pipe(
                list(prompts[i : i + batch_size]),
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=initial_noise(pipe, seeds[i : i + batch_size]),
            )
        images.extend(out.images)
    return images


PRECISIONS = ("auto", "fp32")  # "auto": bfloat16 autocast where the CPU runs it natively | "fp32": never


def check_precision(precision: str) -> None:
    """A one-line ValueError unless ``precision`` is one of PRECISIONS (the configs and ``sample`` call it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; use one of {PRECISIONS}")


def sampling_dtype(pipe, precision: str = "auto"):
    """torch.bfloat16 when ``precision`` is "auto" and a float32 pipeline samples on a CPU with native bfloat16
    (AVX512-BF16 or AMX: the text encoder, UNet and VAE then run under autocast, about a quarter faster for the tiny
    model and judged the same, docs/findings.md, A.3); None otherwise (float32, or the pipeline's own float16 on a
    GPU)."""
    check_precision(precision)
    if precision == "fp32" or pipe.device.type != "cpu" or pipe.unet.dtype != torch.float32:
        return None
    return (
        torch.bfloat16
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else None
    )


def initial_noise(pipe, seeds: list) -> torch.Tensor:
    """Initial latents (B, C, h, w), each drawn on the CPU from its own seed, so a seed gives the same
    image whatever the batch and the device. The pipeline scales them by the sampler's init sigma."""
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    z = torch.stack([torch.randn(c, s, s, generator=torch.Generator("cpu").manual_seed(int(x))) for x in seeds])
    return z.to(pipe.device, pipe.unet.dtype)


def make_grid(images: list, cols: int, scale: int = 4) -> Image.Image:
    """Tile images into a grid, each upscaled ``scale`` times with nearest-neighbour (crisp pixels)."""
    if not images:
        raise ValueError("images is empty; nothing to put in a grid")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w * scale, rows * h * scale), "white")
    for i, im in enumerate(images):
        grid.paste(
            im.resize((w * scale, h * scale), Image.Resampling.NEAREST),
            ((i % cols) * w * scale, (i // cols) * h * scale),
        )
    return grid


def labelled_grid(rows: dict, captions: list, scale: int = 3) -> Image.Image:
    """A grid a person reads at a glance: one row per model (``rows``: {name: images}, its name at the left) and one
    column per prompt, its caption (``captions``) printed above it, word-wrapped."""
    from PIL import ImageDraw, ImageFont

    if not rows or not captions:
        raise ValueError("rows and captions must be non-empty: one row of images per model, one caption per column")
    font = ImageFont.load_default(size=11)
    w, h = (x * scale for x in next(iter(rows.values()))[0].size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(int(draw.textlength(name, font=font)) for name in rows) + 10

    def wrap(text: str) -> list:
        lines = [""]
        for word in text.split():
            line = f"{lines[-1]} {word}".strip()
            if draw.textlength(line, font=font) <= w - 4 or not lines[-1]:
                lines[-1] = line
            else:
                lines.append(word)
        return lines

    wrapped = [wrap(c) for c in captions]
    top = 13 * max(len(x) for x in wrapped) + 6
    gap = 3  # white pixels between images
    grid = Image.new("RGB", (left + len(captions) * (w + gap), top + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((left + j * (w + gap) + 2, 3 + 13 * k), line, fill="black", font=font)
    for i, (name, images) in enumerate(rows.items()):
        draw.text((4, top + i * (h + gap) + h // 2 - 6), name, fill="black", font=font)
        for j, im in enumerate(images[: len(captions)]):
            grid.paste(im.resize((w, h), Image.Resampling.NEAREST), (left + j * (w + gap), top + i * (h + gap)))
    return grid


# ----------------------------------------------------------------------------- CLI: sample a grid
@dataclass
class SampleConfig:
    # pipeline folder or hub id
    model: str = BASE_MODEL
    # where the PNG grid goes
    out: str = "samples/grid.png"
    # images per prompt (one grid row each)
    per_prompt: int = ranged(8, 1, 64)
    # sampler steps
    sample_steps: int = ranged(DEFAULT_STEPS, 1, 1000)
    # classifier-free guidance scale
    guidance: float = ranged(DEFAULT_GUIDANCE, 0.0, 100.0)
    # seed of the first image; image j of a row uses seed + j
    seed: int = seed_field()
    # '|'-separated prompts; empty: one prompt of each category
    prompts: str = ""

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range


def sample_main(argv=None):
    cfg = parse_config(
        SampleConfig, argv, prog="python -m t2idemo sample", description="Sample a grid from a pipeline."
    )
    prompts = [p.strip() for p in cfg.prompts.split("|") if p.strip()] or [
        "two circles",
        "a red square",
        "a triangle on snow",
        "three purple circles on grass",
        "a blue circle on night",
    ]
    if os.path.abspath(cfg.model).startswith(ASSETS):  # a shapes-world model: prompts must use its words
        for p in prompts:
            world.parse_prompt(p)
    pipe = load_pipeline(cfg.model)
    all_prompts = [p for p in prompts for _ in range(cfg.per_prompt)]
    seeds = [cfg.seed + j for _ in prompts for j in range(cfg.per_prompt)]
    images = sample(pipe, all_prompts, seeds, cfg.sample_steps, cfg.guidance)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    make_grid(images, cfg.per_prompt).save(cfg.out)
    for i, p in enumerate(prompts):
        print(f"row {i}: {p}")
    print(f"wrote {cfg.out} ({len(images)} images)")


# ----------------------------------------------------------------------------- Stage 1: the labelling set
SPLITS = ("seen", "unseen", "all")  # seen: the feedback prompts; unseen: held-out combinations (evaluation)
MAX_IMAGES = 100_000  # images per set; file names have 5 digits and image i uses seed seed * MAX_IMAGES + i
PLAN_FIELDS = ("prompt", "seed", "model", "num_inference_steps", "guidance_scale")  # must match to resume
PROMPT_SETS = tuple(
    prompts.SETS
)  # "shapes": the shapes world (t2idemo.world) | "sd": the paper's SD-scale prompts (t2idemo.sd)


@dataclass
class GenerateConfig:
    # folder for the PNGs and metadata.jsonl; created; running again resumes
    out: str = "data/feedback"
    # StableDiffusionPipeline folder or hub id (the shipped tiny-sd, SD v1.5, ...)
    model: str = BASE_MODEL
    # world prompts to use: seen (the feedback prompts) | unseen (held out) | all; ignored if prompts set
    split: str = "seen"
    # '|'-separated prompts in the world's grammar, e.g. "two circles|a red square"
    prompts: str = ""
    # whose prompts (and --prompts grammar): "shapes" (t2idemo.world) | "sd" (the paper's, t2idemo.sd)
    prompt_set: str = "shapes"
    # keep only the first N prompts; 0 keeps all
    max_prompts: int = ranged(0, 0, 1_000_000)
    # K, images per prompt, each with its own seed
    per_prompt: int = ranged(4, 1, 64)
    # sampler steps (the feedback images': FEEDBACK_STEPS)
    sample_steps: int = ranged(FEEDBACK_STEPS, 1, 1000)
    # classifier-free guidance scale (the feedback images': FEEDBACK_GUIDANCE)
    guidance: float = ranged(FEEDBACK_GUIDANCE, 0.0, 100.0)
    # base seed: image i (0-based, prompt-major) uses seed * 100_000 + i
    seed: int = seed_field()
    # images per pipeline call
    batch: int = ranged(64, 1, 65_536)
    # "auto": on a CPU with native bfloat16 the networks run in it (about a quarter faster,
    # judged the same), else float32 | "fp32": always float32 (sampling_dtype)
    precision: str = "auto"
    # "" picks cuda when available, else cpu; or "cpu", "cuda", "cuda:1", "mps"
    device: str = ""

    def __post_init__(self):
        check_ranges(self)  # every number within its declared range
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not one of {SPLITS}")
        if self.prompt_set not in PROMPT_SETS:
            raise ValueError(f"prompt_set={self.prompt_set!r} is not one of {PROMPT_SETS}")
        check_precision(self.precision)
        if self.out == "":  # None: a round of the main job sets it (runconfig.round_configs)
            raise ValueError("out='' is not allowed; pass the folder that receives the images")


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a set made with base ``seed``; distinct across sets and images."""
    if not 0 <= index < MAX_IMAGES:
        raise ValueError(f"index={index!r} is out of range; a set holds at most {MAX_IMAGES} images")
    return seed * MAX_IMAGES + index


def dataset_prompts(cfg: GenerateConfig) -> list:
    """The (prompt, metadata) pairs of a set, in order."""
    prompt_set = prompts.get(cfg.prompt_set)  # the same interface, the same metadata layout
    if cfg.prompts.strip():
        texts = [p.strip() for p in cfg.prompts.split("|") if p.strip()]
        pairs = [(t, prompt_set.parse_prompt(t)) for t in texts]
    else:
        pairs = prompt_set.all_prompts(unseen={"seen": False, "unseen": True, "all": None}[cfg.split])
    return pairs[: cfg.max_prompts] if cfg.max_prompts else pairs


def image_row(
    file_name: str,
    prompt: str,
    meta: dict,
    seed: int,
    model: str,
    sample_steps: int,
    guidance: float,
    prompt_set: str = "shapes",
    **extra,
) -> dict:
    """The metadata row of one drawn image: its prompt and the prompt's metadata (category, named attributes, split),
    its seed and sampler settings; ``extra`` fields (the app's batch number) after them. Every set is written so."""
    return {
        "file_name": file_name,
        "prompt": prompt,
        **meta,
        "named": list(meta["named"]),
        "unseen": bool(meta["unseen"]),
        "prompt_set": prompt_set,
        "seed": seed,
        "model": model,
        "num_inference_steps": sample_steps,
        "guidance_scale": float(guidance),
        **extra,
    }


def plan_rows(cfg: GenerateConfig) -> list:
    """The metadata row of every image of the set, image i (prompt-major) in position i."""
    pairs = dataset_prompts(cfg)
    if len(pairs) * cfg.per_prompt > MAX_IMAGES:
        raise ValueError(
            f"{len(pairs)} prompts x per_prompt={cfg.per_prompt} is more than {MAX_IMAGES} images; "
            f"lower max_prompts or per_prompt"
        )
    rows = []
    for prompt, meta in pairs:
        for _ in range(cfg.per_prompt):
            i = len(rows)
            rows.append(
                image_row(
                    f"{i:05d}.png",
                    prompt,
                    meta,
                    image_seed(cfg.seed, i),
                    cfg.model,
                    cfg.sample_steps,
                    cfg.guidance,
                    cfg.prompt_set,
                )
            )
    return rows


def _resume(out: str, plan: list) -> set:
    """Check what an earlier run left in ``out`` and return the file names already done.

    Keeps rows whose PNG exists, drops rows whose PNG is gone (they are drawn again) and a torn last line,
    and refuses a folder made with other settings, since mixing two sets would corrupt both.
    """
    for name in os.listdir(out):  # temporary files of a write that a crash cut short
        if (name.startswith(".") and name.endswith(".png.tmp")) or name == METADATA + ".tmp":
            os.remove(os.path.join(out, name))
    path = os.path.join(out, METADATA)
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    torn = bool(data) and not data.endswith(b"\n")
    old = load_rows(out, missing_ok=True)
    wanted = {r["file_name"]: r for r in plan}
    keep = {}
    for row in old:
        want = wanted.get(row["file_name"])
        if want is not None:
            diff = [k for k in PLAN_FIELDS if row.get(k) != want[k]]
            if diff:
                k = diff[0]
                raise ValueError(
                    f"out={out!r} already holds a set made with other settings ({row['file_name']}: "
                    f"{k}={row.get(k)!r}, now {want[k]!r}); use a new --out folder or the old settings"
                )
        if os.path.exists(os.path.join(out, row["file_name"])):
            keep[row["file_name"]] = row  # a duplicate row keeps the last one
    if torn or len(keep) != len(old):
        write_rows_atomic(out, list(keep.values()))
    return set(keep) & set(wanted)


def generate_dataset(cfg: GenerateConfig, pipe=None) -> dict:
    """Draw every image of the set that ``cfg.out`` does not hold yet. ``pipe``: an already loaded pipeline
    (else ``cfg.model`` is loaded). Returns {"out", "images", "generated", "seconds"}."""
    require_set(cfg)
    plan = plan_rows(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    done = _resume(cfg.out, plan)
    todo = [r for r in plan if r["file_name"] not in done]
    t0 = time.time()
    if todo:
        if pipe is None:
            pipe = load_pipeline(cfg.model, device=cfg.device or None)
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="img", desc="generate")
        for i in range(0, len(todo), cfg.batch):
            rows = todo[i : i + cfg.batch]
            images = sample(
                pipe,
                [r["prompt"] for r in rows],
                [r["seed"] for r in rows],
                cfg.sample_steps,
                cfg.guidance,
                batch_size=cfg.batch,
                precision=cfg.precision,
            )
            for row, image in zip(rows, images):
                save_png(image, os.path.join(cfg.out, row["file_name"]))
            with open(os.path.join(cfg.out, METADATA), "a", encoding="utf-8") as f:  # rows after their PNGs
                f.write("".join(json.dumps(r) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(rows))
        bar.close()
    return {"out": cfg.out, "images": len(plan), "generated": len(todo), "seconds": round(time.time() - t0, 2)}


def generate_main(argv=None):
    cfg = parse_config(
        GenerateConfig,
        argv,
        prog="python -m t2idemo generate",
        description="Generate the labelling set: K images per prompt + metadata.jsonl (resumable).",
    )
    stats = generate_dataset(cfg)
    print(
        f"{cfg.out}: {stats['images']} images ({stats['generated']} new, {stats['images'] - stats['generated']} "
        f"already there) in {stats['seconds']} s"
    )
    return stats
