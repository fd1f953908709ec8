"""Store kernel on a GPU: byte identity with the reference encoder (random + adversarial inputs, with and
without ChannelParams, NaN policy) and time per launch / per token, eager and from a CUDA graph.

    PYTHONPATH=. python benchmarks/store.py OUT.json [LIMIT_S] [--timings-only]
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
import triton

from multi_turboquant.formats.params import ChannelParams
from multi_turboquant.formats.registry import FORMATS, get_format
from multi_turboquant.kernels.layout import KVCacheLayout
from multi_turboquant.kernels.store_check import adversarial_vectors, compare_records, params_to
from multi_turboquant.kernels.triton_store import store

NAMES = list(FORMATS)
PAIRS = [(k, NAMES[(i + 1) % len(NAMES)]) for i, k in enumerate(NAMES)]  # every format as key and as value
BLOCK = 16
START = time.time()
LIMIT = float(sys.argv[2]) if len(sys.argv) > 2 else 400.0  # seconds after which no new case starts
CHECKS = "--timings-only" not in sys.argv


def params_for(name: str, heads: int, d: int, g: torch.Generator) -> ChannelParams:
    outliers = torch.randperm(d, generator=g)[: d // 8].expand(heads, -1) if name.startswith("turbo") else None
    return ChannelParams(offset=torch.randn(heads, d, generator=g) * 0.5,
                         scale=torch.rand(heads, d, generator=g) * 2 + 1.0, outliers=outliers)


def records(cache: torch.Tensor, slots: torch.Tensor, layout: KVCacheLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, key_bytes), (T, H, value_bytes) read back from the cache at slots."""
    r = cache[slots // BLOCK, :, slots % BLOCK].cpu()
    return r[..., :layout.key_bytes], r[..., layout.key_bytes:]


def check(pair: tuple[str, str], d: int, heads: int, tokens: int, with_params: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    layout = KVCacheLayout(*pair, d, heads, BLOCK)
    key = adversarial_vectors(tokens * heads, d, g).reshape(tokens, heads, d)
    value = torch.randn(tokens, heads, d, generator=g) * 3
    kp = params_for(pair[0], heads, d, g) if with_params else None
    vp = params_for(pair[1], heads, d, g) if with_params else None
    blocks = -(-tokens // BLOCK) + 2
    slots = torch.randperm(blocks * BLOCK, generator=g)[:tokens]
    cache = torch.randint(0, 256, layout.shape(blocks), dtype=torch.uint8, generator=g).cuda()
    t0 = time.time()
    store(key.cuda(), value.cuda(), cache, slots.cuda(), layout, params_to(kp, "cuda"), params_to(vp, "cuda"))
    torch.cuda.synchronize()
    first = time.time() - t0
    got_k, got_v = records(cache, slots, layout)
    ck = compare_records(pair[0], key, got_k, kp)
    cv = compare_records(pair[1], value, got_v, vp)
    return {"pair": pair, "d": d, "params": with_params, "compile_s": round(first, 1),
            "key": ck, "value": cv}


def nan_policy(pair: tuple[str, str], d: int) -> bool:
    layout = KVCacheLayout(*pair, d, 2, BLOCK)
    key = torch.randn(4, 2, d)
    key[0, 0, 3], key[1, 1, 0], key[2, 0, 5] = float("nan"), float("inf"), -float("inf")
    cache = torch.zeros(layout.shape(1), dtype=torch.uint8).cuda()
    store(key.cuda(), key.cuda(), cache, torch.arange(4).cuda(), layout)
    k, _ = records(cache, torch.arange(4), layout)
    dec = get_format(pair[0]).decode(k, d)
    bad = torch.zeros(4, 2, dtype=torch.bool)
    bad[0, 0] = bad[1, 1] = bad[2, 0] = True
    return bool(dec[bad].isnan().all() and dec[~bad].isfinite().all())


def time_store(pair, d, heads, tokens, reps=50, rows_per_program=1, num_warps=1) -> tuple[float, float]:
    """Mean microseconds per launch: eager (CUDA events over `reps` launches) and replayed from a CUDA
    graph of `reps` launches (the device time alone; also shows the launch is graph-capturable)."""
    layout = KVCacheLayout(*pair, d, heads, BLOCK)
    blocks = -(-tokens // BLOCK)
    cache = torch.zeros(layout.shape(blocks), dtype=torch.uint8, device="cuda")
    key = torch.randn(tokens, heads, d, device="cuda", dtype=torch.bfloat16)
    value = torch.randn(tokens, heads, d, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(blocks * BLOCK, device="cuda")[:tokens]
    run = lambda: store(key, value, cache, slots, layout, rows_per_program=rows_per_program,  # noqa: E731
                        num_warps=num_warps)
    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    eager = start.elapsed_time(end) * 1000 / reps
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            run()
    graph.replay()
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return eager, start.elapsed_time(end) * 1000 / reps


TUNING = ((4, 4), (2, 1), (1, 2))  # (rows per program, warps) beside the default (1, 1)


def warm(config: tuple) -> str:
    """Compile one kernel variant (run in a worker process, filling Triton's disk cache)."""
    pair, d, rows, warps = config
    try:
        time_store(pair, d, 2, 4, 1, rows, warps)
        return ""
    except Exception:  # noqa: BLE001 - reported, the other variants go on
        return f"{config}: {traceback.format_exc()[-2000:]}"


def guarded(fn, *args):
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - reported, the other cases go on
        return traceback.format_exc()[-1500:]


def main() -> None:
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "checks": [], "nan_policy": {}, "timings": [], "tuning": []}
    print(out["device"], out["torch"], out["triton"], flush=True)
    configs = [(p, d, 1, 1) for d in (128, 64) for p in PAIRS]
    configs += [(p, 128, r, w) for r, w in TUNING for p in PAIRS[:3:2]]
    with ProcessPoolExecutor(16, mp_context=get_context("spawn")) as pool:
        errors = [e for e in pool.map(warm, configs) if e]
    out["compile_s"] = round(time.time() - START, 1)
    print(f"compiled {len(configs)} variants in {out['compile_s']} s; errors: {errors}", flush=True)
    for d in (128, 64):
        for i, pair in enumerate(PAIRS):
            for with_params in (False, True):
                if CHECKS and time.time() - START < LIMIT:
                    out["checks"].append(guarded(check, pair, d, 8, 1024, with_params, 10 * i + with_params))
                    print("check", out["checks"][-1], flush=True)
        if CHECKS and d == 128:
            for pair in PAIRS:
                out["nan_policy"]["/".join(pair)] = guarded(nan_policy, pair, 128)
            print("nan policy", out["nan_policy"], flush=True)
        for pair in PAIRS:
            for heads in (8, 32):
                for tokens in (1, 16, 64, 256, 2048):
                    if time.time() - START > LIMIT:
                        break
                    us = guarded(time_store, pair, d, heads, tokens)
                    if isinstance(us, str):
                        print(us)
                        break
                    out["timings"].append({"pair": pair, "d": d, "heads": heads, "tokens": tokens,
                                           "eager_us": us[0], "graph_us": us[1]})
                    print(f"time {pair[0]:>12}/{pair[1]:<12} d={d:3} H={heads:2} T={tokens:4}: eager {us[0]:7.1f} "
                          f"graph {us[1]:7.1f} us/launch, {us[1] / tokens * 1000:8.1f} ns/token", flush=True)
    for rows, warps in TUNING:
        for pair in PAIRS[:3:2]:
            for tokens in (16, 2048):
                if time.time() - START > LIMIT:
                    break
                us = guarded(time_store, pair, 128, 8, tokens, 50, rows, warps)
                out["tuning"].append({"pair": pair, "rows": rows, "warps": warps, "tokens": tokens, "us": us})
                print(f"tune {pair} rows={rows} warps={warps} T={tokens}: {us}", flush=True)
    done = [c for c in out["checks"] if isinstance(c, dict)]
    out["summary"] = {k: sum(c[s][k] for c in done for s in ("key", "value"))
                      for k in ("records", "mismatched", "worse")}
    print("summary", out["summary"], f"{len(out['checks']) - len(done)} checks failed to run", flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
