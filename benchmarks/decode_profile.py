"""Where a decode step's time goes: the whole paged_attention op vs its decode kernel alone, per format.

Times (CUDA graphs, L2 flushed, median) the full op, the decode kernel alone on precomputed query features,
and SDPA bf16 on the same shape; then lists each kernel of one eager op with torch.profiler.
`--ncu-once` runs one eager op after warm-up and exits (for `ncu --kernel-name regex:decode ...`).

    python benchmarks/decode_profile.py --formats isoquant3 turboquant25 --context 16384 --batch 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import QUERY_HEADS, random_packed_cache, time_graph  # noqa: E402
from multi_turboquant.kernels import triton_decode  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_attention import (LOG2E, _num_splits, feature_maps,  # noqa: E402
                                                        paged_attention)
from multi_turboquant.kernels.feature_space import per_head_matmul  # noqa: E402
from multi_turboquant.kernels.triton_common import constants, record_spec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--formats", nargs="+", default=["isoquant3", "isoquant4", "turboquant25"])
    p.add_argument("--context", type=int, default=16384)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--gqa", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--ncu-once", action="store_true")
    p.add_argument("--tile", type=int, nargs=2, action="append", metavar=("BLOCK_N", "NUM_WARPS"))
    p.add_argument("--breakdown", action="store_true", help="torch.profiler table of one eager op")
    p.add_argument("--splits", type=int, nargs="+", help="split-KV counts to time (default: the heuristic's)")
    p.add_argument("--maxnreg", type=int, nargs="+", default=[0], help="register caps to time (0: none)")
    a = p.parse_args()
    if a.tile:
        triton_decode.TILE = tuple(a.tile[0])
    gen = torch.Generator(device="cuda").manual_seed(0)
    flush = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    d, hkv, bs, ctx, batch = a.head_dim, QUERY_HEADS // a.gqa, 16, a.context, a.batch
    query = torch.randn(batch, QUERY_HEADS, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    pages = -(-ctx // bs)
    table = torch.randperm(batch * pages, device="cuda", generator=gen).int().view(batch, pages)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    if not a.ncu_once:
        k = torch.randn(batch, QUERY_HEADS // a.gqa, ctx, d, device="cuda", generator=gen, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        q4 = query.view(batch, QUERY_HEADS, 1, d)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q4, k, v, enable_gqa=True)  # noqa: E731
            ms = time_graph(sdpa, flush, a.reps)
        print(f"sdpa_bf16: {ms * 1e3:.1f} us ({2 * k.numel() * 2 / ms / 1e6:.0f} GB/s)", flush=True)
        k = v = None
    for fmt in a.formats:
        layout = KVCacheLayout(fmt, fmt, d, hkv, bs)
        cache = random_packed_cache(layout, batch * pages, gen)
        out = torch.empty_like(query)
        op = lambda: paged_attention(query, cache, layout, table, seq_lens, qsl, d ** -0.5,  # noqa: E731
                                     max_query_len=1, max_seq_len=ctx, out=out)
        op()
        if a.ncu_once:
            torch.cuda.synchronize()
            op()
            torch.cuda.synchronize()
            continue
        kmaps = feature_maps(fmt, layout, None, query.device)
        vmaps = feature_maps(fmt, layout, None, query.device)
        qf = per_head_matmul(query.float().reshape(batch, hkv, a.gqa, d) * LOG2E, kmaps.query).contiguous()
        rows, fv = batch * QUERY_HEADS, vmaps.num_features
        spec = record_spec(fmt, d)
        nbytes = batch * ctx * hkv * layout.slot_bytes
        for block_n, warps in a.tile or [(0, 0)]:
            triton_decode.TILE = (block_n, warps) if block_n else None
            for splits, cap in ((s, c) for s in a.splits or [_num_splits(batch * hkv, ctx, query.device)]
                                for c in a.maxnreg):
                triton_decode.MAX_REGISTERS = cap or None
                target = torch.empty(splits, rows, fv, dtype=torch.float32, device="cuda")
                m = torch.empty(splits, rows, dtype=torch.float32, device="cuda")
                lse = torch.empty_like(m)
                kern = lambda: triton_decode.launch(qf, cache, layout, spec, spec, table, seq_lens, qsl, None,  # noqa: E731
                                                    constants(query.device), target, m, lse, splits)
                op = lambda: paged_attention(query, cache, layout, table, seq_lens, qsl, d ** -0.5,  # noqa: E731
                                             max_query_len=1, max_seq_len=ctx, out=out, num_splits=splits)
                t_op, t_k = time_graph(op, flush, a.reps), time_graph(kern, flush, a.reps)
                print(f"{fmt} tile {block_n}/{warps} splits {splits} maxnreg {cap}: op {t_op * 1e3:.1f} us, decode kernel "
                      f"{t_k * 1e3:.1f} us ({nbytes / t_k / 1e6:.0f} GB/s)", flush=True)
        if a.breakdown:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    op()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)

if __name__ == "__main__":
    main()
