"""Reading a large file through the loader on CPU maps it; it does not copy it into anonymous memory."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from multi_turboquant.loader import iter_weights

MIB = 1 << 20
TENSORS, TENSOR_MIB = 2, 64  # a 128 MiB file; 64 MiB tensors are above glibc's largest mmap threshold (32 MiB),
# so the control's copies always get fresh pages (smaller ones may reuse memory earlier tests freed)


def rss_anon() -> int:
    """Resident anonymous memory of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse file: all-zero U8 tensors, so writing it costs no disk I/O or memory."""
    header = {f"w{i}": {"dtype": "U8", "shape": [TENSOR_MIB, MIB], "data_offsets": [i * TENSOR_MIB * MIB, (i + 1) * TENSOR_MIB * MIB]} for i in range(TENSORS)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + TENSORS * TENSOR_MIB * MIB)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_views_stay_out_of_anonymous_memory(big_file: Path) -> None:
    size = TENSORS * TENSOR_MIB * MIB
    before = rss_anon()
    views = [t for _, t in iter_weights(big_file)]
    assert sum(int(v.max()) for v in views) == 0  # every byte read
    assert rss_anon() - before < 32 * MIB
    # Control: owned copies of the same file do land in anonymous memory, so the bound above can fail.
    copies = [t for _, t in iter_weights(big_file, copy=True)]
    assert rss_anon() - before > size * 3 // 4
    assert len(copies) == len(views) == TENSORS
    del copies
    assert torch.equal(views[0][:1], torch.zeros(1, MIB, dtype=torch.uint8))
