"""Automatic calibration: the vLLM plugin's default when no calibration file is given.

The first engine start with a model computes its calibration file (as `mtq calibrate` would, on a built-in text:
multi_turboquant/data/calibration_text.txt) and caches it under <cache>/calibration; later starts read it. The file
name holds a hash of the model folder, its config and weight files, the horizon, the format version and RECIPE, so
a changed checkpoint or recipe is calibrated again.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from ..formats.version import FORMAT_VERSION
from ..models import cache_dir

RECIPE = "auto-2"  # bump when the text, window, outliers or any other choice below changes
WINDOW = 1024
MAX_OUTLIERS = 32
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TEXT_SOURCE = "CPython's LICENSE (multi_turboquant/data/calibration_text.txt)"


def _log(message: str) -> None:
    print(f"multi-turboquant: {message}", file=sys.stderr)


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def model_folder(model: str | Path) -> Path:
    """The resolved local Hugging Face folder of `model` (a folder, or a hub id already in the local Hugging Face
    cache); ValueError otherwise."""
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        path = _hub_snapshot(str(model)) or path
    if not (path / "config.json").is_file() or not _weight_files(path):
        raise ValueError(f"{str(model)!r} is not a local Hugging Face model folder (config.json and *.safetensors "
                         "or *.bin), so its KV cache cannot be calibrated automatically; pass a file from `mtq "
                         'calibrate` ({"calibration": "FILE"}) or turn calibration off ({"calibration": "none"}) '
                         'in additional_config["multi_turboquant"]')
    return path.resolve()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The folder of `repo_id` in the local Hugging Face cache, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not installed, not a repo id, not cached
        return None


def cache_key(folder: Path, horizon: int) -> str:
    """sha256 of what the calibration depends on: the folder, its config.json, its weight files' names, sizes and
    mtimes, the horizon, FORMAT_VERSION and RECIPE."""
    h = hashlib.sha256()
    for part in (str(folder.resolve()), f"horizon={horizon}", f"format={FORMAT_VERSION}", f"recipe={RECIPE}"):
        h.update(part.encode() + b"\0")
    h.update((folder / "config.json").read_bytes() + b"\0")
    for weights in _weight_files(folder):
        stat = weights.stat()
        h.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode() + b"\0")
    return h.hexdigest()


def calibration_text() -> str:
    """The built-in calibration text (disjoint from the evaluation corpus of multi_turboquant/eval/corpus.py)."""
    return files("multi_turboquant.data").joinpath("calibration_text.txt").read_text(encoding="utf-8")


def compute(folder: Path, horizon: int, out: Path, log: Callable[[str], None] = _log) -> None:
    """Write the calibration file of the model in `folder` at `out` (on the GPU if there is one)."""
    import torch

    from .calibrate import PER_LAYER_ROPE, calibrate, per_layer_rope
    from .hooks import default_device, load_model

    device = default_device()
    default_dtype = torch.get_default_dtype()  # vLLM builds its model, and so calls us, under the model's dtype
    torch.set_default_dtype(torch.float32)
    try:
        lm = load_model(folder, device, torch.float32 if device == "cpu" else torch.bfloat16)
        ids = torch.tensor(lm.tokenizer(calibration_text()).input_ids)
        if per_layer_rope(lm):
            log(f"{folder.name}: {PER_LAYER_ROPE}")
        calibrate(lm, ids, WINDOW, min(MAX_OUTLIERS, lm.head_dim // 2), out, TEXT_SOURCE, sink_weight=0.0,
                  centroid=True, horizon=horizon)
        del lm
    finally:
        torch.set_default_dtype(default_dtype)
        if device == "cuda":
            torch.cuda.empty_cache()


def auto_calibration(model: str | Path, horizon: int, log: Callable[[str], None] = _log) -> Path:
    """The calibration file of `model` for contexts of `horizon` positions, computed on first use and cached."""
    folder = model_folder(model)
    path = cache_dir() / "calibration" / f"{folder.name}-{cache_key(folder, horizon)}.json"
    if path.is_file():
        return path
    log(f"calibrating {folder} for its KV cache (first start only) ...")
    start = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        compute(folder, horizon, tmp, log)
        os.replace(tmp, path)  # atomic: other processes see no file or the whole file
    finally:
        tmp.unlink(missing_ok=True)
    log(f"calibrated in {time.monotonic() - start:.0f} s; cached at {path}")
    return path
