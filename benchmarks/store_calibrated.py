"""The store kernel with and without the default calibration's key streams (scale, centroid, position offsets), at
decode batch sizes, CUDA graphs, warm L2: which part of a calibrated store costs what.

    PYTHONPATH=. python benchmarks/store_calibrated.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import random_packed_cache, time_graph  # noqa: E402
from multi_turboquant.formats.params import ChannelParams  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_store import store  # noqa: E402


def params(kind: str, hkv: int, d: int) -> ChannelParams | None:
    """Key calibration of one kind: none, scale, centroid (+ scale), positional (+ centroid + scale)."""
    if kind == "none":
        return None
    scale = torch.rand(hkv, d) + 0.5
    centroid = torch.randn(hkv, d) if kind != "scale" else None
    if kind == "positional":
        return ChannelParams(scale=scale, centroid=centroid, position_offset=torch.randn(32, hkv, d) * 0.1)
    return ChannelParams(offset=torch.randn(hkv, d) * 0.1, scale=scale, centroid=centroid)


def main() -> None:
    flush = torch.empty(0, device="cuda")
    print("| format | d | KV heads | tokens | key calibration | warps | store µs |\n|---|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for fmt in ("isoquant3", "turboquant35"):
        for d, hkv, batch in ((64, 3, 16), (128, 8, 32)):
            layout = KVCacheLayout(fmt, fmt, d, hkv, 16)
            cache = random_packed_cache(layout, 256, gen)
            key = torch.randn(batch, hkv, d, device="cuda", generator=gen).bfloat16()
            slots = torch.randperm(256 * 16, device="cuda", generator=gen)[:batch]
            positions = torch.randint(0, 8000, (batch,), device="cuda", generator=gen)
            for kind in ("none", "scale", "centroid", "positional"):
                kp = params(kind, hkv, d)
                for warps in (1, 4):
                    fn = lambda: store(key, key, cache, slots, layout, kp, None, positions, num_warps=warps)  # noqa
                    us = time_graph(fn, flush, 50) * 1e3
                    print(f"| {fmt} | {d} | {hkv} | {batch} | {kind} | {warps} | {us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
