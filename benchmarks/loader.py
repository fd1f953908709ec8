"""Safetensors loading throughput: multi_turboquant.loader vs safetensors.safe_open vs vLLM's default iterator.

Every method loads the same checkpoint into preallocated parameters on the target device, the way vLLM's
weight loaders do (`param.copy_(tensor)` for each yielded tensor), so each run reads every byte:
  mtq        multi_turboquant.loader.iter_files (CPU: zero-copy views of the map; CUDA: chunked streaming
             through pinned staging buffers)
  safe_open  safetensors.safe_open(device=target).get_tensor for every name
  vllm       vLLM's safetensors_weights_iterator (CPU tensors), copied to the target (only if vLLM imports)
Cold runs drop the page cache before each run (as root: sync + /proc/sys/vm/drop_caches; otherwise
posix_fadvise(POSIX_FADV_DONTNEED) on each file, which the output says). Warm runs follow one untimed
load. Methods alternate within each repetition. Prints a markdown table; --json writes the raw numbers.

    python benchmarks/loader.py --make-synthetic /tmp/mtq-bench --size-gib 1.5
    python benchmarks/loader.py /tmp/mtq-bench --device cpu --repeats 3 --json out.json
Needs only torch and safetensors (vLLM optional).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from multi_turboquant.loader import iter_files, resolve_checkpoint
from multi_turboquant.loader.checkpoint import INDEX_NAME

Weights = Iterator[tuple[str, torch.Tensor]]
Method = Callable[[list[Path], torch.device, int], Weights]


def make_synthetic(out: Path, size_gib: float, shards: int = 2) -> None:
    """A bf16 checkpoint shaped like a small LLM (one large embedding, many matrices, tiny norms)."""
    out.mkdir(parents=True, exist_ok=True)
    hidden, vocab = 2048, 32000
    layer_bytes = (4 * hidden * hidden + 2 * hidden) * 2
    layers = max(1, int((size_gib * 2**30 - 2 * vocab * hidden * 2) // layer_bytes))
    gen = torch.Generator().manual_seed(0)
    names: dict[str, torch.Size] = {"model.embed_tokens.weight": torch.Size((vocab, hidden))}
    for i in range(layers):
        for proj in ("q", "k", "v", "o"):
            names[f"model.layers.{i}.self_attn.{proj}_proj.weight"] = torch.Size((hidden, hidden))
        names[f"model.layers.{i}.input_layernorm.weight"] = torch.Size((hidden,))
        names[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.Size((hidden,))
    names["lm_head.weight"] = torch.Size((vocab, hidden))
    per_shard = -(-len(names) // shards)
    items = list(names.items())
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: torch.randn(shape, generator=gen).to(torch.bfloat16) for n, shape in items[s * per_shard : (s + 1) * per_shard]}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    print(f"wrote {len(names)} tensors in {shards} shards to {out}")


def evict(files: list[Path]) -> str:
    """Drop the files from the page cache; returns how."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "drop_caches"
        except OSError:
            pass
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise_dontneed"


def mtq(files: list[Path], device: torch.device, chunk_bytes: int) -> Weights:
    return iter_files(files, device, chunk_bytes=chunk_bytes)


def safe_open_weights(files: list[Path], device: torch.device, chunk_bytes: int) -> Weights:
    for f in files:
        with safe_open(str(f), framework="pt", device=str(device)) as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, st.get_tensor(name)


def vllm_weights(files: list[Path], device: torch.device, chunk_bytes: int) -> Weights:
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    return safetensors_weights_iterator([str(f) for f in files], False)


def methods() -> dict[str, Method]:
    out: dict[str, Method] = {"mtq": mtq, "safe_open": safe_open_weights}
    try:
        import vllm.model_executor.model_loader.weight_utils  # noqa: F401
    except ImportError:
        return out
    out["vllm"] = vllm_weights
    return out


def params_for(files: list[Path], device: torch.device) -> dict[str, torch.Tensor]:
    """Preallocated, touched destination tensors, as a model's parameters would be."""
    params = {}
    for name, view in iter_files(files, "cpu"):
        params[name] = torch.zeros(view.shape, dtype=view.dtype, device=device)
    return params


def load_once(weights: Weights, params: dict[str, torch.Tensor], device: torch.device) -> float:
    start = time.perf_counter()
    for name, tensor in weights:
        params[name].copy_(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path, nargs="?", help="checkpoint: .safetensors, index .json or directory")
    p.add_argument("--make-synthetic", type=Path, metavar="DIR", help="write a synthetic bf16 checkpoint to DIR and exit")
    p.add_argument("--size-gib", type=float, default=1.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-mib", type=int, default=64)
    p.add_argument("--modes", default="cold,warm", help="comma-separated: cold, warm")
    p.add_argument("--methods", default=None, help="comma-separated subset of mtq, safe_open, vllm")
    p.add_argument("--json", type=Path, help="write raw results here")
    args = p.parse_args(argv)
    if args.make_synthetic:
        make_synthetic(args.make_synthetic, args.size_gib)
        return 0
    if args.path is None:
        p.error("path is required unless --make-synthetic is given")

    device = torch.device(args.device)
    files = list(resolve_checkpoint(args.path).files)
    nbytes = sum(f.stat().st_size for f in files)
    available = methods()
    chosen = {m: available[m] for m in (args.methods.split(",") if args.methods else available)}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    params = params_for(files, device)
    chunk = args.chunk_mib << 20
    results: list[dict[str, Any]] = []
    how = ""
    for mode in args.modes.split(","):
        times: dict[str, list[float]] = {m: [] for m in chosen}
        if mode == "warm":
            for fn in chosen.values():
                load_once(fn(files, device, chunk), params, device)
        for _ in range(args.repeats):
            for name, fn in chosen.items():
                if mode == "cold":
                    how = evict(files)
                times[name].append(load_once(fn(files, device, chunk), params, device))
        for name, ts in times.items():
            med = statistics.median(ts)
            results.append({"method": name, "mode": mode, "seconds": ts, "median_s": med, "gb_per_s": nbytes / med / 1e9})

    by = {(r["method"], r["mode"]): r for r in results}
    host = f"{cpu_name()}, {os.cpu_count()} cores"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"checkpoint: {args.path} ({len(files)} files, {nbytes / 2**30:.2f} GiB); device: {device} (GPU: {gpu}); "
          f"host: {host}; torch {torch.__version__}; chunk {args.chunk_mib} MiB; repeats {args.repeats}; "
          f"cold eviction: {how or 'n/a'}; load average at start {load}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print("| method | cache | median s | GB/s | mtq speed-up | runs (s) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in results:
        ours = by.get(("mtq", r["mode"]))
        ratio = f"{r['median_s'] / ours['median_s']:.2f}x" if ours else "-"
        runs = ", ".join(f"{t:.2f}" for t in r["seconds"])
        print(f"| {r['method']} | {r['mode']} | {r['median_s']:.3f} | {r['gb_per_s']:.2f} | {ratio} | {runs} |")
    if args.json:
        meta = {"path": str(args.path), "bytes": nbytes, "device": str(device), "gpu": gpu, "host": host,
                "torch": torch.__version__, "python": sys.version.split()[0], "chunk_mib": args.chunk_mib,
                "eviction": how, "loadavg": load, "utc": datetime.now(timezone.utc).isoformat()}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
