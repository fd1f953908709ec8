"""The store kernel's share of a decode step: one layer's quantize-on-write of the batch's new tokens against that
layer's decode attention over the packed cache, both captured in CUDA graphs, in the same run.

Issue #5's target is "store <= 5% of a decode step at 4K context". Per format (keys and values in it), at
head_dim 128, 32 query heads, GQA 8, batch 8, 4K context, this times (median of graph replays, L2 flushed):
the store of 8 tokens (at each of `--warps`), the decode attention op, the two in one graph, SDPA bf16 on the
same shape and a one-element zero_() (the floor of one kernel in a graph), and prints store / (store +
attention) with the fastest store. `--old PATH` also times the store kernel of another checkout of the package
(a folder holding `multi_turboquant/`), in a subprocess, for a before/after in one run.

    PYTHONPATH=. python benchmarks/store_share.py --json out.json [--old /path/to/old/checkout]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import QUERY_HEADS, random_packed_cache, time_graph  # noqa: E402
from multi_turboquant.formats.registry import FORMATS  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402


def store_op(layout: KVCacheLayout, cache: torch.Tensor, batch: int, gen: torch.Generator, warps: int = 1):
    """One layer's store of `batch` new tokens into random slots (`warps` per program), as a closure."""
    from multi_turboquant.kernels.triton_store import store
    key = torch.randn(batch, layout.num_kv_heads, layout.head_dim, device="cuda", generator=gen).bfloat16()
    value = torch.randn_like(key)
    slots = torch.randperm(cache.shape[0] * layout.block_size, device="cuda", generator=gen)[:batch]
    return lambda: store(key, value, cache, slots, layout, num_warps=warps)


def store_only(formats: list[str], d: int, hkv: int, batch: int, reps: int, flush: torch.Tensor) -> dict[str, float]:
    """Graph-timed store (µs) per format, with whichever multi_turboquant is first on sys.path."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for fmt in formats:
        layout = KVCacheLayout(fmt, fmt, d, hkv, 16)
        cache = random_packed_cache(layout, 64, gen)
        out[fmt] = time_graph(store_op(layout, cache, batch, gen), flush, reps) * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--gqa", type=int, default=8)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warps", type=int, nargs="+", default=[1], help="store launches' warps per program to time")
    p.add_argument("--warm-l2", action="store_true", help="no L2 flush between replays (the default flushes 128 MiB)")
    p.add_argument("--old", type=Path, help="a folder holding another multi_turboquant/ to time its store too")
    p.add_argument("--json", type=Path)
    p.add_argument("--ncu-once", action="store_true",
                   help="launch each format's store twice per --warps value and exit (for `ncu --kernel-name "
                        "regex:_store_kernel ...`)")
    p.add_argument("--store-only", action="store_true", help=argparse.SUPPRESS)  # the --old subprocess
    a = p.parse_args()
    d, hkv, batch, ctx = a.head_dim, QUERY_HEADS // a.gqa, a.batch, a.context
    flush = torch.empty(1 if a.warm_l2 else 128 << 20, dtype=torch.uint8, device="cuda")
    if a.store_only:
        print(json.dumps(store_only(a.formats, d, hkv, batch, a.reps, flush)))
        return
    if a.ncu_once:
        gen = torch.Generator(device="cuda").manual_seed(0)
        for fmt in a.formats:
            layout = KVCacheLayout(fmt, fmt, d, hkv, 16)
            for warps in a.warps:
                put = store_op(layout, random_packed_cache(layout, 64, gen), batch, gen, warps)
                for _ in range(2):
                    put()
                    torch.cuda.synchronize()
        return
    from multi_turboquant.kernels.triton_attention import paged_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    bs = 16
    pages = -(-ctx // bs)
    query = torch.randn(batch, QUERY_HEADS, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    table = torch.randperm(batch * pages, device="cuda", generator=gen).int().view(batch, pages)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    k = torch.randn(batch, hkv, ctx, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q4 = query.view(batch, QUERY_HEADS, 1, d)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        sdpa_us = time_graph(lambda: torch.nn.functional.scaled_dot_product_attention(q4, k, v, enable_gqa=True),
                             flush, a.reps) * 1e3
    del k, v
    old = {}
    if a.old:
        env = dict(os.environ, PYTHONPATH=f"{a.old.resolve()}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        cmd = [sys.executable, __file__, "--store-only", "--formats", *a.formats, "--head-dim", str(d), "--gqa",
               str(a.gqa), "--batch", str(batch), "--reps", str(a.reps)] + (["--warm-l2"] if a.warm_l2 else [])
        old = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    tiny = torch.zeros(1, device="cuda")
    floor_us = time_graph(tiny.zero_, flush, a.reps) * 1e3
    rows = []
    print(f"d={d} GQA {a.gqa} ({QUERY_HEADS} query heads) batch {batch} context {ctx}, L2 "
          f"{'warm' if a.warm_l2 else 'flushed'}: SDPA bf16 {sdpa_us:.1f} µs; a one-element zero_() {floor_us:.1f} µs")
    warps_cols = " | ".join(f"store µs, {w} warps" for w in a.warps)
    print(f"| format | {warps_cols} | attention µs | both in one graph µs | store / (store + attention) | old store µs |")
    print("|---" * (5 + len(a.warps)) + "|")
    for fmt in a.formats:
        layout = KVCacheLayout(fmt, fmt, d, hkv, bs)
        cache = random_packed_cache(layout, batch * pages, gen)
        out = torch.empty_like(query)
        by_warps = {w: time_graph(store_op(layout, cache, batch, gen, w), flush, a.reps) * 1e3 for w in a.warps}
        warps = min(by_warps, key=by_warps.get)
        put = store_op(layout, cache, batch, gen, warps)
        attend = lambda: paged_attention(query, cache, layout, table, seq_lens, qsl, d ** -0.5,  # noqa: E731
                                         max_query_len=1, max_seq_len=ctx, out=out)
        attn_us = time_graph(attend, flush, a.reps) * 1e3
        both_us = time_graph(lambda: (put(), attend()), flush, a.reps) * 1e3
        store_us = by_warps[warps]
        row = dict(format=fmt, store_us_by_warps=by_warps, attention_us=attn_us, both_us=both_us,
                   share=store_us / (store_us + attn_us), old_store_us=old.get(fmt))
        rows.append(row)
        old_s = f"{old[fmt]:.1f}" if fmt in old else ""
        cols = " | ".join(f"{by_warps[w]:.1f}" for w in a.warps)
        print(f"| {fmt} | {cols} | {attn_us:.1f} | {both_us:.1f} | {row['share']:.1%} | {old_s} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(card=torch.cuda.get_device_name(), context=ctx, batch=batch, head_dim=d,
                                          gqa=a.gqa, l2="warm" if a.warm_l2 else "flushed", sdpa_bf16_us=sdpa_us,
                                          tiny_kernel_us=floor_us, rows=rows), indent=1))


if __name__ == "__main__":
    main()
