"""Parse and validate the header of a safetensors file.

Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data section. The JSON maps
tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section)
and may hold a "__metadata__" map of strings. Valid files cover the data section exactly: tensors sorted
by offset start at 0, each begins where the previous one ends, and the last ends at the end of the file.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .dtypes import torch_dtype
from .errors import SafetensorsError

MAX_HEADER_BYTES = 100_000_000  # the same bound the reference implementation enforces
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: dtype, shape and byte range [begin, end) within the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header; `tensors` are sorted by offset and `data_start` is the data section's file offset."""

    path: Path
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SafetensorsError(f"duplicate key {key!r} in header")
        out[key] = value
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(name: str, entry: object, where: str) -> TensorInfo:
    """One tensor entry of the JSON header, checked for types and for shape x itemsize == byte length."""
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: entry must be an object, got {type(entry).__name__}")
    missing = {"dtype", "shape", "data_offsets"} - entry.keys()
    if missing:
        raise SafetensorsError(f"{where}: entry lacks {', '.join(sorted(missing))}")
    dtype = torch_dtype(entry["dtype"], where)
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end] non-negative integers, got {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise SafetensorsError(f"{where}: data_offsets end {end} < begin {begin}")
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise SafetensorsError(
            f"{where}: shape {shape} of {entry['dtype']} needs {expected} bytes but data_offsets span {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _check_coverage(path: Path, tensors: list[TensorInfo], data_bytes: int, file_size: int) -> None:
    """Tensors sorted by offset must tile [0, data_bytes) with no gap, overlap or overrun."""
    pos, prev = 0, None
    for t in tensors:
        if t.begin < pos:
            raise SafetensorsError(f"{path}: tensor {t.name!r} bytes [{t.begin}, {t.end}) overlap tensor {prev!r}")
        if t.begin > pos:
            raise SafetensorsError(f"{path}: gap of {t.begin - pos} bytes before tensor {t.name!r} at offset {pos}")
        if t.end > data_bytes:
            raise SafetensorsError(
                f"{path}: file is truncated: tensor {t.name!r} needs data bytes [{t.begin}, {t.end}) but the file "
                f"holds only {data_bytes} bytes of data ({file_size} bytes in all)"
            )
        pos, prev = t.end, t.name
    if pos != data_bytes:
        raise SafetensorsError(f"{path}: {data_bytes - pos} trailing bytes after the last tensor (data ends at {pos})")


def parse_header(path: Path, raw: bytes, file_size: int) -> Header:
    """Validate the JSON header bytes `raw` of the file at `path` whose size is `file_size`."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except SafetensorsError as exc:
        raise SafetensorsError(f"{path}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object, got {type(obj).__name__}")
    metadata = obj.pop(METADATA_KEY, None)
    metadata = {} if metadata is None else metadata  # null is allowed; [], "" or 0 are not maps
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: {METADATA_KEY} must map strings to strings")
    tensors = sorted(
        (_parse_entry(name, entry, f"{path}: tensor {name!r}") for name, entry in obj.items()),
        key=lambda t: (t.begin, t.end),
    )
    data_start = 8 + len(raw)
    _check_coverage(path, tensors, file_size - data_start, file_size)
    return Header(path, tuple(tensors), metadata, data_start, file_size)


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of one safetensors file (reads only the header bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: file of {file_size} bytes is too small for the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > file_size:
                raise SafetensorsError(f"{path}: file is truncated: header length {n} but the file has {file_size} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise SafetensorsError(f"cannot read safetensors file {path}: {exc.strerror or exc}") from exc
    return parse_header(path, raw, file_size)
