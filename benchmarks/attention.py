"""Decode attention over packed KV caches (multi_turboquant.kernels.triton_attention) vs bf16 baselines.

Per decode step (one query token per sequence, 32 query heads): the Triton kernel for each format, PyTorch
SDPA (flash backend) over a dense bf16 cache, and vLLM's flash-attention over a paged bf16 cache when
`import vllm` works; plus the store kernel's time per token when multi_turboquant.kernels.triton_store
exists. Each case reports the bytes-moved floor (the cache bytes the step must read) and the achieved
bandwidth. Every call is captured in a CUDA graph and timed by its replays with CUDA events, L2 flushed
between replays; the median is reported.

`--check` first compares the kernel with the torch reference (naive.py) and with float32 attention over
the original K/V on real shapes (decode and chunked prefill, every format, head_dim 64 and 128).
The store kernel is timed eagerly (launch overhead included), since it may validate its input on the host.

    python benchmarks/attention.py --check --json out.json            # full sweep
    python benchmarks/attention.py --head-dims 128 --gqa 8 --contexts 16384 --batches 8 --formats isoquant3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multi_turboquant.formats.params import OFFSET_BUCKET, ChannelParams  # noqa: E402
from multi_turboquant.formats.registry import FORMATS  # noqa: E402
from multi_turboquant.kernels import naive  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels import triton_decode  # noqa: E402
from multi_turboquant.kernels.triton_attention import paged_attention  # noqa: E402
from multi_turboquant.kernels.triton_common import record_spec  # noqa: E402

QUERY_HEADS = 32
SCALE_BYTES_AT = {"turboquant": 4, "isoquant": 2, "planarquant": 2}  # record tail holding the bf16 scale


def time_graph(fn, flush: torch.Tensor, reps: int) -> float:
    """Median milliseconds of one replay of fn captured in a CUDA graph, L2 flushed before each replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_eager(fn, reps: int) -> float:
    """Median milliseconds of one eager call (launch overhead included), for ops that cannot be captured."""
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_packed_cache(layout: KVCacheLayout, num_blocks: int, gen: torch.Generator) -> torch.Tensor:
    """Random code bytes with sane record scales (bf16 in [0.01, 0.11)): timing data, never zeros or NaN."""
    cache = torch.randint(0, 256, layout.shape(num_blocks), dtype=torch.uint8, device="cuda", generator=gen)
    for start, name, nbytes in ((0, layout.key_format, layout.key_bytes),
                                (layout.key_bytes, layout.value_format, layout.value_bytes)):
        at = start + nbytes - SCALE_BYTES_AT[FORMATS[name].family]
        scale = torch.rand(layout.shape(num_blocks)[:3], device="cuda", generator=gen) * 0.1 + 0.01
        cache[..., at:at + 2] = scale.to(torch.bfloat16).unsqueeze(-1).view(torch.uint8)
    return cache


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm())


def passed(c: dict) -> bool:
    """A check row passes: no NaN, within 1e-2 of the reference (float16 dots, bf16 output), and no further from
    exact attention than the reference itself (5% + 5e-3 slack)."""
    return (not c["nan"] and c["err_vs_reference"] <= 1e-2
            and c["kernel_err_vs_fp32"] <= 1.05 * c["reference_err_vs_fp32"] + 5e-3)


def check(head_dims: list[int], formats: list[str], window: int | None = None) -> list[dict]:
    """Kernel vs reference vs float32 attention over the original K/V on a GQA-8 batch with ragged contexts, without
    calibration and with a key centroid (format version 2; an eighth of the keys lie near it, as sink-like keys);
    with a sliding window, the pages before each sequence's window point at a page of 0xFF records (NaN if read), as
    vLLM's freed pages point at its null block.

    A kernel that raises (compile error, CUDA fault) gives a failed row with the error; the caller exits 1."""
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(int(time.time()))
    hkv, bs = QUERY_HEADS // 8, 16
    seq_lens = [3000, 700, 17, 1500]
    for d, fmt, q_lens in ((d, f, q) for d in head_dims for f in formats
                           for q in ([1, 1, 1, 1], [1, 1, 1, 300])):  # decodes; decodes and a chunked prefill
        decode = max(q_lens) == 1
        print(f"# check {fmt} d={d} {'decode' if decode else 'decode+prefill'} (compiling on first use)", flush=True)
        layout = KVCacheLayout(fmt, fmt, d, hkv, bs)
        pages = [-(-n // bs) for n in seq_lens]
        table = torch.zeros(len(seq_lens), max(pages), dtype=torch.int32, device="cuda")
        perm = torch.randperm(sum(pages), device="cuda", generator=gen).int()
        centroid = torch.randn(hkv, d, device="cuda", generator=gen) * 3
        ks, vs, slots, used = [], [], [], 0
        for b, n in enumerate(seq_lens):
            table[b, :pages[b]] = perm[used:used + pages[b]]
            used += pages[b]
            # keys with a few large channels, as real keys have
            k = torch.randn(n, hkv, d, device="cuda", generator=gen) * (1 + 4 * (torch.arange(d, device="cuda") % 17 == 0))
            near = torch.rand(n, device="cuda", generator=gen) < 0.125
            k[near] = centroid + 0.1 * torch.randn(int(near.sum()), hkv, d, device="cuda", generator=gen)
            ks.append(k)
            vs.append(torch.randn(n, hkv, d, device="cuda", generator=gen))
            slots.append((table[b, :pages[b]].long()[:, None] * bs + torch.arange(bs, device="cuda")).reshape(-1)[:n])
        if window is not None:
            poisoned = sum(pages)  # the cache's last page, never written
            for b, (n, q) in enumerate(zip(seq_lens, q_lens)):
                table[b, :naive.window_start(n - q, window) // bs] = poisoned
        qsl = torch.tensor([0] + q_lens, device="cuda").cumsum(0).int()
        query = torch.randn(sum(q_lens), QUERY_HEADS, d, device="cuda", generator=gen, dtype=torch.bfloat16)
        new_k = torch.cat([k[n - q:] for k, n, q in zip(ks, seq_lens, q_lens)]).bfloat16()
        new_v = torch.cat([v[n - q:] for v, n, q in zip(vs, seq_lens, q_lens)]).bfloat16()
        exact = torch.cat([naive.attend(query[qsl[b]:qsl[b + 1]], ks[b], vs[b], d ** -0.5, n - q, window)
                           for b, (n, q) in enumerate(zip(seq_lens, q_lens))])
        offset_rows = torch.randn(-(-max(seq_lens) // OFFSET_BUCKET), hkv, d, device="cuda", generator=gen)
        for key_params in (None, ChannelParams(offset=0.1 * torch.randn(hkv, d, device="cuda", generator=gen),
                                               centroid=centroid),
                           ChannelParams(position_offset=offset_rows, centroid=centroid)):
            cache = torch.full(layout.shape(sum(pages) + 1), 0xFF, dtype=torch.uint8, device="cuda")
            for k, v, s in zip(ks, vs, slots):
                naive.store(k, v, cache, s, layout, key_params, None, torch.arange(k.shape[0], device="cuda"))
            args = (query, cache, layout, table, torch.tensor(seq_lens, device="cuda", dtype=torch.int32), qsl,
                    d ** -0.5, key_params)
            for fresh in ((False, True) if key_params is None else (True,)):
                extra = (None, new_k, new_v) if fresh else ()
                batch = ("decode" if decode else "decode+prefill") + (f", window {window}" if window else "")
                row = {"format": fmt, "head_dim": d, "batch": batch,
                       "fresh_new_tokens": fresh, "key_centroid": key_params is not None,
                       "key_position_offset": key_params is not None and key_params.positional}
                try:
                    ref = naive.paged_attention(*args, *extra, window=window)
                    out = torch.full_like(query, float("nan"))
                    paged_attention(*args, *extra, out=out, window=window)
                    torch.cuda.synchronize()
                    row.update(nan=bool(out.isnan().any()), err_vs_reference=rel_err(out, ref),
                               kernel_err_vs_fp32=rel_err(out, exact), reference_err_vs_fp32=rel_err(ref, exact))
                    row["ok"] = passed(row)
                except Exception as e:  # report and go on: one format's failure must not hide the others'
                    row.update(ok=False, error=f"{type(e).__name__}: {e}"[:300])
                rows.append(row)
                print(check_row(row), flush=True)
    return rows


def vllm_flash(query, k_pages, v_pages, table, seq_lens, qsl, max_seq_len, scale):
    """vLLM's paged flash-attention call (vllm.vllm_flash_attn, as vLLM's FlashAttention backend makes it)."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func
    return lambda: flash_attn_varlen_func(q=query, k=k_pages, v=v_pages, max_seqlen_q=1, cu_seqlens_q=qsl,
                                          max_seqlen_k=max_seq_len, seqused_k=seq_lens, softmax_scale=scale,
                                          causal=True, block_table=table)


def store_fn(layout: KVCacheLayout, cache: torch.Tensor, batch: int, gen: torch.Generator,
             key_params: ChannelParams | None = None):
    """One decode step's store (batch tokens) with the Triton store kernel, or None when it is absent."""
    try:
        from multi_turboquant.kernels.triton_store import store
    except ImportError:
        return None
    key = torch.randn(batch, layout.num_kv_heads, layout.head_dim, device="cuda", generator=gen).bfloat16()
    value = torch.randn_like(key)
    slots = torch.randperm(cache.shape[0] * layout.block_size, device="cuda", generator=gen)[:batch]
    positions = torch.randint(0, 32768, (batch,), device="cuda", generator=gen)
    return lambda: store(key, value, cache, slots, layout, key_params, None, positions)


def sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    flush = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    free_bytes = torch.cuda.mem_get_info()[0]
    for d in args.head_dims:
        for gqa in args.gqa:
            hkv = QUERY_HEADS // gqa
            for ctx in args.contexts:
                for batch in args.batches:
                    base = {"head_dim": d, "gqa": gqa, "context": ctx, "batch": batch}
                    dense_bytes = 2 * batch * ctx * hkv * d * 2
                    if 3 * dense_bytes > free_bytes:
                        rows.append({**base, "impl": "all", "skipped": "does not fit GPU memory"})
                        print(case_row(rows[-1]), flush=True)
                        continue
                    rows += run_case(args, base, d, hkv, ctx, batch, gen, flush)
                    torch.cuda.empty_cache()
    return rows


def run_case(args, base, d, hkv, ctx, batch, gen, flush) -> list[dict]:
    """All implementations for one (head_dim, gqa, context, batch) decode step."""
    rows = []
    bs, scale = args.block_size, d ** -0.5
    query = torch.randn(batch, QUERY_HEADS, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    pages = -(-ctx // bs)
    table = torch.randperm(batch * pages, device="cuda", generator=gen).int().view(batch, pages)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")

    def record(impl: str, ms: float, nbytes: int, **extra) -> dict:
        row = {**base, "impl": impl, "ms": ms, "floor_bytes": nbytes, "GBps": nbytes / ms / 1e6, **extra}
        rows.append(row)
        print(case_row(row), flush=True)
        return row

    k = torch.randn(batch, hkv, ctx, d, device="cuda", generator=gen, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q4 = query.view(batch, QUERY_HEADS, 1, d)
    dense_bytes = 2 * k.numel() * 2
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q4, k, v, scale=scale, enable_gqa=True)  # noqa: E731
        try:
            bf16_ms = time_graph(sdpa, flush, args.reps)
        except RuntimeError as e:
            bf16_ms = float("nan")
            print(f"sdpa flash failed: {e}", file=sys.stderr)
    record("sdpa_bf16", bf16_ms, dense_bytes)
    try:
        k_pages = k.permute(0, 2, 1, 3).reshape(batch * pages, bs, hkv, d)  # (num_blocks, block_size, Hkv, d)
        v_pages = v.permute(0, 2, 1, 3).reshape(batch * pages, bs, hkv, d)
        fn = vllm_flash(query, k_pages, v_pages, torch.arange(batch * pages, device="cuda").int().view(batch, pages),
                        seq_lens, qsl, ctx, scale)
        record("vllm_flash_bf16", time_graph(fn, flush, args.reps), dense_bytes)
        k_pages = v_pages = None
    except Exception as e:  # vLLM is optional: absent, or another build's signature
        if args.verbose:
            print(f"vllm flash-attention unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    k = v = None  # free before the packed caches
    for fmt, (block_n, warps) in ((f, t) for f in args.formats for t in args.tile):
        layout = KVCacheLayout(fmt, fmt, d, hkv, bs)
        cache = random_packed_cache(layout, batch * pages, gen)
        out = torch.empty_like(query)
        triton_decode.TILE = (block_n, warps) if block_n else None
        print(f"# {fmt} d={d} ctx={ctx} batch={batch}: tile {triton_decode.tile(*[record_spec(fmt, d)] * 2)} "
              "(compiling on first use)",
              flush=True)
        key_params = None
        if args.key_centroid or args.key_position:
            rows_needed = -(-ctx // OFFSET_BUCKET)
            key_params = ChannelParams(centroid=torch.randn(hkv, d, device="cuda", generator=gen),
                                       position_offset=torch.randn(rows_needed, hkv, d, device="cuda", generator=gen)
                                       if args.key_position else None)
        fn = lambda: paged_attention(query, cache, layout, table, seq_lens, qsl, scale, key_params,  # noqa: E731
                                     max_query_len=1, max_seq_len=ctx, out=out)
        try:
            ms = time_graph(fn, flush, args.reps)
        except Exception as e:  # report, go on with the other formats (a CUDA fault ends them all anyway)
            print(f"decode kernel failed for {fmt}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            rows.append({**base, "impl": fmt, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        try:
            put = store_fn(layout, cache, batch, gen, key_params) if args.store else None
            store_us = time_eager(put, args.reps) * 1e3 / batch if put else None
        except Exception as e:  # another worker's kernel: report, do not stop the sweep
            print(f"store kernel failed for {fmt}: {type(e).__name__}: {e}", file=sys.stderr)
            store_us = None
        impl = (fmt if len(args.tile) == 1 else f"{fmt} (block_n {block_n}, {warps} warps)") + \
            (" +centroid" if args.key_centroid or args.key_position else "") + (" +position" if args.key_position else "")
        record(impl, ms, batch * ctx * hkv * layout.slot_bytes, vs_bf16=ms / bf16_ms, store_us_per_token=store_us)
        cache = None
    return rows


CHECK_HEADER = ("| format | d | batch | fresh new tokens | key centroid | key offset by position | NaN | err vs reference "
                "| kernel err vs fp32 | reference err vs fp32 | ok |\n|---|---|---|---|---|---|---|---|---|---|---|")
CASE_HEADER = "| d | gqa | ctx | batch | impl | ms | floor MB | GB/s | × bf16 | store µs/token |\n" + "|---" * 10 + "|"


def check_row(c: dict) -> str:
    head = (f"| {c['format']} | {c['head_dim']} | {c['batch']} | {c['fresh_new_tokens']} | {c['key_centroid']} "
            f"| {c.get('key_position_offset', False)} ")
    if "error" in c:
        return head + f"| | | | | FAILED: {c['error']} |"
    return head + (f"| {c['nan']} | {c['err_vs_reference']:.2e} | {c['kernel_err_vs_fp32']:.4f} "
                   f"| {c['reference_err_vs_fp32']:.4f} | {'ok' if c['ok'] else 'FAILED'} |")


def case_row(r: dict) -> str:
    head = f"| {r['head_dim']} | {r['gqa']} | {r['context']} | {r['batch']} "
    if "skipped" in r:
        return head + f"| — | skipped: {r['skipped']} | | | | |"
    ratio = f"{r['vs_bf16']:.2f}" if "vs_bf16" in r else ""
    store = f"{r['store_us_per_token']:.2f}" if r.get("store_us_per_token") else ""
    return head + (f"| {r['impl']} | {r['ms']:.4f} | {r['floor_bytes'] / 1e6:.1f} | {r['GBps']:.0f} | {ratio} "
                   f"| {store} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--head-dims", type=int, nargs="+", default=[128], help="timing sweep")
    p.add_argument("--check-head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--check-window", type=int, help="check with this sliding window (e.g. 512, Gemma 3's)")
    p.add_argument("--gqa", type=int, nargs="+", default=[8])
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 16384])
    p.add_argument("--batches", type=int, nargs="+", default=[8])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--tile", type=int, nargs=2, action="append", metavar=("BLOCK_N", "NUM_WARPS"),
                   help="decode kernel tile config to time (repeatable; default: triton_decode's)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--check", action="store_true", help="correctness on real shapes first")
    p.add_argument("--json", type=Path, help="write all numbers here")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--check-only", action="store_true", help="skip the timing sweep")
    p.add_argument("--no-store", dest="store", action="store_false", help="skip the store kernel's timing")
    p.add_argument("--key-position", action="store_true",
                   help="time the formats with a key centroid and a position-dependent key offset")
    p.add_argument("--key-centroid", action="store_true",
                   help="time the formats with a key centroid (format version 2: the flagged keys' score term)")
    args = p.parse_args(argv)
    args.tile = args.tile or [(0, 0)]  # 0: the per-format default (triton_decode.tile)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")
    if args.check:
        print(CHECK_HEADER, flush=True)
    checks = check(args.check_head_dims, args.formats, args.check_window) if args.check else []
    if not args.check_only:
        print(CASE_HEADER, flush=True)
    rows = [] if args.check_only else sweep(args)
    if args.json:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        args.json.write_text(json.dumps({"meta": meta, "checks": checks, "cases": rows}, indent=1))
    failed = [c for c in checks if not c["ok"]]
    if failed:
        raise SystemExit(f"attention check FAILED for {len(failed)} of {len(checks)} cases: "
                         f"{sorted({(c['format'], c['head_dim']) for c in failed})}")
    if any("error" in r for r in rows):
        raise SystemExit("attention timing FAILED for: " + ", ".join(r["impl"] for r in rows if "error" in r))
    if args.check:
        print(f"attention check passed: {len(checks)} cases", flush=True)


if __name__ == "__main__":
    main()
