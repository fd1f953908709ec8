"""`mtq load`: read a safetensors checkpoint with the loader and report its throughput."""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._help import examples

if TYPE_CHECKING:
    import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "load",
        help="read a safetensors checkpoint through the memory-mapped loader and report GB/s",
        description="Reads every tensor of a .safetensors file, index .json or checkpoint directory onto the "
        "device (on CPU, tensors are copied out of the map so that every byte is read) and prints "
        "tensors, bytes, seconds and GB/s.",
        **examples("mtq load path/to/model --device cuda --verify"),
    )
    p.add_argument("path", type=Path, help="a .safetensors file, a model.safetensors.index.json, or a directory")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--chunk-mib", type=int, default=64, help="staging chunk size for device copies (default: 64)")
    p.add_argument("--verify", action="store_true", help="compare every tensor bitwise with safetensors.safe_open")
    p.set_defaults(func=run)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, dtype and shape included."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8).cpu(), b.reshape(-1).view(torch.uint8).cpu())


def _mismatches(path: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names that differ between `tensors` and what safetensors.safe_open reads from `path`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as ref:
        names = set(ref.keys())
        bad = sorted(names ^ tensors.keys())
        return bad + [n for n in sorted(names & tensors.keys()) if not _same(tensors[n], ref.get_tensor(n))]


def _fail(message: str) -> int:
    print(f"mtq load: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import resolve_checkpoint
    from .errors import SafetensorsError
    from .weights import iter_files

    if args.chunk_mib < 1:
        return _fail("--chunk-mib must be positive")
    if args.verify and importlib.util.find_spec("safetensors") is None:
        return _fail("--verify needs the safetensors package")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        return _fail(str(exc))
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("CUDA is not available")
    count = nbytes = mismatches = 0
    seconds = 0.0
    try:
        ckpt = resolve_checkpoint(args.path)
        for path in ckpt.files:
            start = time.perf_counter()
            tensors = dict(iter_files([path], device, copy=True, chunk_bytes=args.chunk_mib << 20, checkpoint=ckpt))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            count += len(tensors)
            nbytes += sum(t.numel() * t.element_size() for t in tensors.values())
            bad = _mismatches(path, tensors) if args.verify else []
            for name in bad:
                print(f"mismatch: {path.name}: {name}", file=sys.stderr)
            mismatches += len(bad)
    except SafetensorsError as exc:
        return _fail(str(exc))
    rate = nbytes / seconds / 1e9 if seconds else float("inf")
    print(
        f"{count} tensors in {len(ckpt.files)} file(s), {nbytes} bytes ({nbytes / 2**30:.3f} GiB) "
        f"to {device} in {seconds:.3f} s: {rate:.2f} GB/s (chunk {args.chunk_mib} MiB)"
    )
    if args.verify:
        print(f"verify: {count - mismatches}/{count} tensors match safetensors.safe_open")
    return 1 if mismatches else 0
