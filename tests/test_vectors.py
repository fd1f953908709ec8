"""Bit-exact test vectors (tests/vectors/*.json): the spec's ground truth for every format."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import multi_turboquant as mtq

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def floats(hexes: list[str], head_dim: int) -> torch.Tensor:
    return torch.tensor([struct.unpack("<f", bytes.fromhex(h))[0] for h in hexes]).reshape(-1, head_dim)


@pytest.mark.parametrize("name", list(mtq.FORMATS))
def test_vectors_encode_bit_exact(name):
    data = load(name)
    assert data["format"] == name and data["format_version"] == mtq.FORMAT_VERSION
    fmt = mtq.get_format(name)
    cases = {(e["head_dim"], e["case"]) for e in data["vectors"]}
    assert {d for d, _ in cases} == {64, 96, 128, 256}
    assert {c for _, c in cases} == {"gaussian", "outliers", "tiny", "zero", "calibrated", "centroid"}
    for entry in data["vectors"]:
        d = entry["head_dim"]
        x = floats(entry["input"], d)
        params = mtq.ChannelParams.from_json(entry["params"]) if "params" in entry else None
        expected = torch.tensor([list(bytes.fromhex(h)) for h in entry["packed"]], dtype=torch.uint8)
        got = fmt.encode(x, params)
        assert torch.equal(got, expected), f"{name} d={d} case={entry['case']}"
        # and the bytes decode to a close reconstruction (zero stays zero)
        out = fmt.decode(expected, d, params=params)
        if entry["case"] == "zero":
            assert torch.equal(out, torch.zeros_like(x))
            continue
        if entry["case"] == "centroid":  # rows 0, 1 and 4 lie at the centroid: flagged; row 4 decodes to it exactly
            flags = (expected[:, -fmt.flag_byte] >> 7).tolist()
            assert flags == [1, 1, 0, 0, 1], f"{name} d={d}: flags {flags}"
            assert torch.equal(out[4], params.centroid)
            out, x = out[:4], x[:4]
        # iso/planar without calibration are weak on outlier channels (BENCHMARKS.md)
        bound = 0.8 if entry["case"] == "outliers" else 0.45
        assert ((out - x).norm() / x.norm()).item() < bound


def test_vectors_catch_a_changed_constant(monkeypatch):
    """A 2% change in one codebook level must break the vectors (they can fail)."""
    from multi_turboquant.formats import codebooks

    entries = [e for e in load("isoquant3")["vectors"] if e["case"] in ("gaussian", "outliers")]
    expected = [[bytes.fromhex(h) for h in e["packed"]] for e in entries]
    levels = list(codebooks.LLOYD_MAX_POSITIVE[3])
    levels[1] = levels[1] * 1.02
    monkeypatch.setitem(codebooks.LLOYD_MAX_POSITIVE, 3, tuple(levels))
    codebooks._tables.cache_clear()
    codebooks._scaled_thresholds.cache_clear()
    try:
        fmt = mtq.get_format("isoquant3")
        got = [[bytes(r.tolist()) for r in fmt.encode(floats(e["input"], e["head_dim"]))] for e in entries]
        assert got != expected
    finally:
        monkeypatch.undo()
        codebooks._tables.cache_clear()
        codebooks._scaled_thresholds.cache_clear()
