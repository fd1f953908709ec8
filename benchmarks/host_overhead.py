"""Host time per call of the plugin's kernel entry points on tiny inputs (the cost an eager, host-bound step pays per
layer): store, decode attention, prefill attention, the FlashAttention path's decoder. Each is timed twice: as is
(on CUDA: Python + Triton's launch path, no sync per call) and with every Triton kernel replaced by a no-op (our own
Python and torch ops only), so the difference is Triton's launch cost. On a machine without CUDA only the second
runs (CPU tensors).

    PYTHONPATH=. python benchmarks/host_overhead.py [--calls 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multi_turboquant.formats.params import ChannelParams  # noqa: E402
from multi_turboquant.kernels import (prefill, triton_attention, triton_decode, triton_dequant,  # noqa: E402
                                      triton_store)
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402

KERNELS = ((triton_attention, ("_query_kernel", "_attention_kernel", "_merge_splits_kernel", "_output_kernel")),
           (triton_store, ("_store_kernel",)), (triton_dequant, ("_decode_kernel",)),
           (triton_decode, ("decode_kernel",)))


class NoLaunch:
    """A Triton kernel stand-in: kernel[grid](...) does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def calls(device: torch.device) -> dict:
    """The four entry points on SmolLM2-sized inputs (3 KV heads, d=64, default-calibration-like key params)."""
    hkv, d, hq = 3, 64, 9
    layout = KVCacheLayout("isoquant3", "isoquant3", d, hkv, 16)
    kp = ChannelParams(position_offset=torch.randn(32, hkv, d), scale=torch.rand(hkv, d) + 0.5,
                       centroid=torch.randn(hkv, d)).map(lambda t: t.to(device))
    vp = ChannelParams(offset=torch.randn(hkv, d), scale=torch.rand(hkv, d) + 0.5).map(lambda t: t.to(device))
    cache = torch.zeros(layout.shape(512), dtype=torch.uint8, device=device)
    n = 64
    kv = torch.randn(n, hkv, d, device=device, dtype=torch.bfloat16)
    slots = torch.arange(n, device=device)
    q = torch.randn(n, hq, d, device=device, dtype=torch.bfloat16)
    table = torch.arange(512, dtype=torch.int32, device=device)[None]
    seq, starts = torch.tensor([n], device=device), torch.tensor([0, n], device=device)
    q16 = torch.randn(16, hq, d, device=device, dtype=torch.bfloat16)
    seq16, starts16 = torch.full((16,), 500, device=device), torch.arange(17, device=device)
    table16 = torch.arange(16 * 32, dtype=torch.int32, device=device).reshape(16, 32)
    plan = prefill.Plan.build(table, [n])
    return {
        "store, 64 tokens": lambda: triton_store.store(kv, kv, cache, slots, layout, kp, vp, slots),
        "decode attention, batch 16": lambda: triton_attention.paged_attention(
            q16, cache, layout, table16, seq16, starts16, 0.1, kp, vp, max_query_len=1, max_seq_len=500),
        "prefill attention, 64 tokens": lambda: triton_attention.paged_attention(
            q, cache, layout, table, seq, starts, 0.1, kp, vp, max_query_len=n, max_seq_len=n),
        "decoder, 64 tokens (plan given)": lambda: triton_dequant.decode_sequences(cache, layout, plan, kp, vp,
                                                                                   torch.bfloat16),
    }


def host_us(fn, n: int, sync) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - t
    sync()
    return elapsed / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    real = {name: host_us(fn, a.calls, sync) for name, fn in calls(device).items()} if cuda else {}
    for module, names in KERNELS:
        for name in names:
            setattr(module, name, NoLaunch())
    stubbed = {name: host_us(fn, a.calls, sync) for name, fn in calls(device).items()}
    print(f"host µs per call on {device} ({a.calls} calls)\n\n| entry point | as is | kernels as no-ops | launches |")
    print("|---|---|---|---|")
    for name, us in stubbed.items():
        whole = real.get(name)
        print(f"| {name} | {'-' if whole is None else f'{whole:.0f}'} | {us:.0f} | "
              f"{'-' if whole is None else f'{whole - us:.0f}'} |")


if __name__ == "__main__":
    main()
