"""One prefill chunk over a long packed context: the packed-cache Triton kernel against FlashAttention over K/V decoded
from the packed cache (kernels/prefill.py, the plugin's default prefill path) and FlashAttention over a bf16 cache
(what `auto` does), on one GPU with vLLM installed (its FlashAttention).

First a correctness check on a small batch (every format as K, whole prompts and continuation chunks, against the
reference on the CPU), then per format: a chunk of `--chunk` queries at the end of a `--context`-token sequence, one
layer, timed eagerly with CUDA events (the prefill path reads host lengths, as in vLLM, where prefill attention runs
outside CUDA graphs), median of `--reps`.

    PYTHONPATH=. python benchmarks/prefill.py [--context 32768 --chunk 8192 --head-dim 128 --kv-heads 8]

`--sweep FORMAT` instead times both paths over a range of shapes (SmolLM2's and an 8B model's heads, chunks of 256 to
8,192 tokens), with each shape's work (query-key pairs x query heads x head_dim), to place the plugin's gate
FLASH_MIN_WORK where the two paths cross.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import random_packed_cache, rel_err, time_eager as timed  # noqa: E402
from multi_turboquant.formats.registry import FORMATS  # noqa: E402
from multi_turboquant.kernels import naive, prefill  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_attention import paged_attention  # noqa: E402
from multi_turboquant.vllm.compat import flash_attn_varlen  # noqa: E402


def check(flash, fmt: str, d: int) -> float:
    """Relative error of the flash prefill path against the CPU reference on a small mixed batch."""
    layout = KVCacheLayout(fmt, "isoquant4", d, 2, 16)
    gen = torch.Generator().manual_seed(0)
    seq_lens, q_lens = [300, 77, 129], [300, 40, 2]
    table = torch.randperm(64, generator=gen)[:3 * 19].reshape(3, 19).int()
    cache = torch.zeros(layout.shape(64), dtype=torch.uint8)
    for b, n in enumerate(seq_lens):
        slots = table[b, torch.arange(n) // 16].long() * 16 + torch.arange(n) % 16
        naive.store(torch.randn(n, 2, d, generator=gen) + 0.5, torch.randn(n, 2, d, generator=gen), cache, slots,
                    layout)
    starts = [0, *torch.tensor(q_lens).cumsum(0).tolist()]
    query = torch.randn(starts[-1], 8, d, generator=gen)
    ref = naive.paged_attention(query, cache, layout, table, torch.tensor(seq_lens), torch.tensor(starts), 0.1)
    out = prefill.prefill(query.cuda().bfloat16(), cache.cuda(), layout, table.cuda(), seq_lens, starts, 0.1,
                          attention=flash)
    return rel_err(out.cpu(), ref)


def both_paths(flash, query: torch.Tensor, cache: torch.Tensor, layout: KVCacheLayout, table: torch.Tensor, ctx: int,
               reps: int) -> tuple[float, float]:
    """ms of the packed kernel and of the flash path for `query`, a chunk at the end of a ctx-token sequence."""
    chunk = query.shape[0]
    seq, starts = torch.tensor([ctx], device="cuda"), torch.tensor([0, chunk], device="cuda")
    packed = timed(lambda: paged_attention(query, cache, layout, table, seq, starts, 0.1, max_query_len=chunk,
                                           max_seq_len=ctx), reps)
    dense = timed(lambda: prefill.prefill(query, cache, layout, table, [ctx], [0, chunk], 0.1, attention=flash), reps)
    return packed, dense


SWEEP = [(d, hkv, hq, ctx, chunk) for d, hkv, hq in ((64, 3, 9), (128, 8, 32))
         for ctx, chunk in ((512, 512), (2048, 2048), (4096, 4096), (4096, 256), (8192, 1024), (32768, 2048),
                            (32768, 8192))]


def sweep(flash, fmt: str, reps: int) -> None:
    """Packed kernel vs flash path per shape, one layer, with each shape's work."""
    print(f"\n{fmt}, one layer, a chunk at the end of a context\n")
    print("| d | KV / q heads | context | chunk | work | packed ms | flash ms | packed / flash |")
    print("|---|---|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for d, hkv, hq, ctx, chunk in SWEEP:
        layout = KVCacheLayout(fmt, fmt, d, hkv, 16)
        cache = random_packed_cache(layout, ctx // 16, gen)
        table = torch.arange(ctx // 16, dtype=torch.int32, device="cuda")[None]
        query = torch.randn(chunk, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.3
        packed, dense = both_paths(flash, query, cache, layout, table, ctx, reps)
        work = (chunk * (ctx - chunk) + chunk * (chunk + 1) // 2) * hq * d
        print(f"| {d} | {hkv} / {hq} | {ctx} | {chunk} | 2^{work.bit_length() - 1} | {packed:.3f} | {dense:.3f} | "
              f"{packed / dense:.2f}x |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--query-heads", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sweep", nargs="+", choices=list(FORMATS), help="time both paths over SWEEP's shapes instead")
    a = p.parse_args()
    flash = flash_attn_varlen()
    if flash is None:
        sys.exit("needs vLLM's FlashAttention on a CUDA GPU")
    if a.sweep:
        for fmt in a.sweep:
            sweep(flash, fmt, a.reps)
        return
    print("| format | flash prefill vs reference (rel. error) |\n|---|---|")
    for fmt in a.formats:
        print(f"| {fmt} | {check(flash, fmt, 128):.2e} |", flush=True)
    d, hkv, ctx, chunk = a.head_dim, a.kv_heads, a.context, a.chunk
    gen = torch.Generator(device="cuda").manual_seed(0)
    blocks = ctx // 16
    table = torch.arange(blocks, dtype=torch.int32, device="cuda")[None]
    query = torch.randn(chunk, a.query_heads, d, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.3
    k16 = torch.randn(ctx, hkv, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v16 = torch.randn_like(k16)
    cu_q = torch.tensor([0, chunk], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, ctx], dtype=torch.int32, device="cuda")
    bf16 = timed(lambda: flash(q=query, k=k16, v=v16, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=chunk,
                               max_seqlen_k=ctx, softmax_scale=0.1, causal=True), a.reps)
    print(f"\none layer, a chunk of {chunk} queries at the end of {ctx} tokens, d={d}, {a.query_heads} query / {hkv} "
          f"KV heads; FlashAttention over bf16 K/V: {bf16:.2f} ms\n")
    print("| format | packed kernel ms | flash over decoded K/V ms | of which decode ms | packed / flash | "
          "flash / bf16 |")
    print("|---|---|---|---|---|---|")
    for fmt in a.formats:
        layout = KVCacheLayout(fmt, fmt, d, hkv, 16)
        cache = random_packed_cache(layout, blocks, gen)
        packed, dense = both_paths(flash, query, cache, layout, table, ctx, a.reps)
        decode = prefill.decoder(cache, layout)
        plan = prefill.Plan.build(table, [ctx])
        dec = timed(lambda: decode(cache, layout, plan, None, None, torch.bfloat16), a.reps)
        print(f"| {fmt} | {packed:.2f} | {dense:.2f} | {dec:.2f} | {packed / dense:.1f}x | {dense / bf16:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
