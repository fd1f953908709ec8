"""Find the files of a (possibly sharded) safetensors checkpoint."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import SafetensorsError

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Checkpoint:
    """The files of a checkpoint, and the index's name -> file map when there is an index."""

    files: tuple[Path, ...]
    weight_map: dict[str, Path] = field(default_factory=dict)


def _escapes(fname: str) -> bool:
    """Whether an index's file name is absolute or climbs out of the index's folder (on any OS)."""
    posix, windows = PurePosixPath(fname), PureWindowsPath(fname)
    return bool(posix.anchor or windows.anchor or ".." in posix.parts or ".." in windows.parts)


def _from_index(index: Path) -> Checkpoint:
    try:
        obj = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{index}: cannot read index: {exc}") from None
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SafetensorsError(f"{index}: index needs a \"weight_map\" object of tensor name -> file name")
    outside = sorted({f for f in weight_map.values() if _escapes(f)})
    if outside:
        raise SafetensorsError(f"{index}: index names files outside its folder: {', '.join(outside)}")
    resolved = {name: index.parent / fname for name, fname in weight_map.items()}
    files = tuple(sorted(set(resolved.values())))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SafetensorsError(f"{index}: index names missing files: {', '.join(missing)}")
    return Checkpoint(files, resolved)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """A .safetensors file, an index .json, or a directory (its index if present, else its *.safetensors)."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return _from_index(path / INDEX_NAME)
        files = tuple(sorted(path.glob("*.safetensors")))
        if not files:
            raise SafetensorsError(f"{path}: directory holds no *.safetensors files and no {INDEX_NAME}")
        return Checkpoint(files)
    if path.is_file():
        return _from_index(path) if path.suffix == ".json" else Checkpoint((path,))
    raise SafetensorsError(f"{path}: no such file or directory")
