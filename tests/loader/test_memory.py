"""Reading a large file through the loader on CPU maps it; it does not copy it into anonymous memory."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 1 << 20
TENSORS, TENSOR_MIB = 2, 64  # a 128 MiB file


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


MEASURE = """
import json, sys
from pathlib import Path
from multi_turboquant.loader import iter_weights

def rss_anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

before = rss_anon()
views = [t for _, t in iter_weights(sys.argv[1])]
read = sum(int(v.max()) for v in views)
after_views = rss_anon()
copies = [t for _, t in iter_weights(sys.argv[1], copy=True)]
print(json.dumps({"read": read, "views": after_views - before, "copies": rss_anon() - before, "n": len(copies)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_views_stay_out_of_anonymous_memory(big_file: Path) -> None:
    # measured in a fresh process: in a long test run the allocator may hand the control's copies pages that
    # earlier tests freed but kept resident, and the control would then see no growth
    run = subprocess.run([sys.executable, "-c", MEASURE, str(big_file)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    size = TENSORS * TENSOR_MIB * MIB
    assert got["read"] == 0 and got["n"] == TENSORS  # every byte read, every tensor copied
    assert got["views"] < 32 * MIB
    # Control: owned copies of the same file do land in anonymous memory, so the bound above can fail.
    assert got["copies"] > size * 3 // 4

