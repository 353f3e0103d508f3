"""The data layer: imagefolder datasets (PNG files next to a ``metadata.jsonl``) read and written safely.

Every stage keeps its images in this layout, which ``datasets.load_dataset("imagefolder", data_dir=DIR)`` reads:
one JSON row per image with its ``file_name`` and the prompt's metadata (plus the sampler settings, and the
``label`` once someone has labelled it). Writes never leave a half-written file: a PNG is written to a temporary
name and renamed into place, and ``metadata.jsonl`` is replaced in one rename. This module imports nothing of
t2idemo, so every stage can import it.
"""

from __future__ import annotations

import hashlib
import json
import os

from PIL import Image

METADATA = "metadata.jsonl"  # the metadata file name that the imagefolder loader looks for


def load_rows(folder: str, name: str = "data", missing_ok: bool = False) -> list[dict]:
    """The rows of ``folder/metadata.jsonl`` in file order. A folder without rows is an error naming the argument
    ``name`` ("data", "eval_data", ...), or, with ``missing_ok``, []: a set that is still being drawn or labelled.

    A last line without its newline is a write cut short by a crash; it is ignored (``generate`` repairs it).
    """
    path = os.path.join(folder or "", METADATA)
    if not folder or not os.path.isfile(path):
        if missing_ok:
            return []
        raise ValueError(f"{name}={folder!r} has no metadata.jsonl; pass a dataset folder from generate_dataset")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for n, line in enumerate(lines[:-1], 1):  # lines[-1] is "" or the torn tail of an interrupted write
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); the metadata file is damaged") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ValueError(f"{path}, line {n}: a row must be a JSON object with a 'file_name' string")
        rows.append(row)
    if not rows and not missing_ok:
        raise ValueError(f"{name}={folder!r}: metadata.jsonl is empty")
    return rows


def write_rows_atomic(data_dir: str, rows: list) -> None:
    """Replace ``metadata.jsonl`` in one step: write a temporary file, fsync it, rename it over the old one."""
    path = os.path.join(data_dir, METADATA)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_png(image: Image.Image, path: str) -> None:
    """Write a PNG so that ``path`` is either absent or complete, never half-written."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        image.save(f, format="PNG")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_images(folder: str, rows: list[dict]) -> list:
    """The RGB images of ``rows`` (their files closed once read)."""
    images = []
    for r in rows:
        with Image.open(os.path.join(folder, r["file_name"])) as im:
            images.append(im.convert("RGB"))
    return images


def pipeline_digest(path: str) -> str:
    """sha256 of what ``StableDiffusionPipeline.from_pretrained(path)`` reads: model_index.json and its components'
    folders (not a fine-tune's checkpoint or snapshots). Two folders with one digest draw the same images. A hub id
    or a folder without model_index.json: ""."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return ""
    with open(index, encoding="utf-8") as f:
        parts = sorted(k for k in json.load(f) if not k.startswith("_") and os.path.isdir(os.path.join(path, k)))
    files = [index] + [
        os.path.join(root, name)
        for part in parts
        for root, _, names in sorted(os.walk(os.path.join(path, part)))
        for name in sorted(names)
    ]
    h = hashlib.sha256()
    for file in files:
        h.update(os.path.relpath(file, path).encode() + b"\0")
        with open(file, "rb") as f:
            h.update(f.read())
    return h.hexdigest()
