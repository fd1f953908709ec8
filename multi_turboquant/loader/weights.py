"""The loader's public entry points: iterate or load the tensors of a safetensors checkpoint."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .checkpoint import Checkpoint, resolve_checkpoint
from .errors import SafetensorsError
from .safetensors_file import SafetensorsFile
from .streamer import DEFAULT_CHUNK_BYTES, DeviceStreamer

PathLike = str | os.PathLike[str]


def _check_index(f: SafetensorsFile, ckpt: Checkpoint) -> None:
    """Every tensor the index places in this file must be in it."""
    present = {t.name for t in f.tensors}
    missing = sorted(name for name, path in ckpt.weight_map.items() if path == f.path and name not in present)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SafetensorsError(f"{f.path}: index lists {len(missing)} tensors this file lacks: {shown}")


def iter_files(
    files: Iterable[PathLike],
    device: str | torch.device = "cpu",
    *,
    copy: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    num_buffers: int = 2,
    checkpoint: Checkpoint | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the given safetensors files, each file validated before its first tensor.

    On CPU without `copy`, tensors are zero-copy read-only views of the memory-mapped files; with `copy`
    they are owned copies. On another device they are streamed in chunks of `chunk_bytes`. Tensors whose
    name `keep` rejects are skipped (on CPU their bytes are never read).
    """
    device = torch.device(device)
    streamer = DeviceStreamer(device, chunk_bytes, num_buffers) if device.type != "cpu" else None
    for path in files:
        with SafetensorsFile(path) as f:
            if checkpoint is not None:
                _check_index(f, checkpoint)
            infos = [t for t in f.tensors if keep is None or keep(t.name)]
            if streamer is not None:
                yield from streamer.stream(f, infos)
            else:
                for info in infos:
                    view = f.view(info)
                    yield info.name, view.clone() if copy else view


def iter_weights(path: PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a checkpoint: a .safetensors file, an index .json, or a directory.

    Keyword arguments are those of `iter_files`.
    """
    ckpt = resolve_checkpoint(path)
    return iter_files(ckpt.files, device, checkpoint=ckpt, **kwargs)


def load_weights(path: PathLike, device: str | torch.device = "cpu", **kwargs: Any) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint as a dict (see `iter_files` for the keyword arguments)."""
    return dict(iter_weights(path, device, **kwargs))
