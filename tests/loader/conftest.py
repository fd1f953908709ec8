"""Writers of safetensors files for the loader tests, including deliberately broken ones."""
from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RawWriter = Callable[..., Path]


def _write_raw(path: Path, header: dict[str, Any], data: bytes, header_len: int | None = None) -> Path:
    """A file of the given JSON header and data section; `header_len` overrides the length prefix."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


@pytest.fixture
def write_raw(tmp_path: Path) -> RawWriter:
    """write_raw(name, header, data, header_len=None) -> path of a hand-built safetensors file."""
    return lambda name, header, data, header_len=None: _write_raw(tmp_path / name, header, data, header_len)


@pytest.fixture
def good_header() -> dict[str, Any]:
    """Header of two F32 tensors: a (2,) at [0, 8) and b (3,) at [8, 20)."""
    return {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]},
    }
