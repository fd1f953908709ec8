"""Same input, same bytes: encode on the CPU and on a CUDA device and compare every byte.

Run on a GPU host from the repo root: `python benchmarks/device_check.py [--json OUT.json]`.
Also checks the test vectors on the device and prints decode differences. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multi_turboquant as mtq  # noqa: E402
from multi_turboquant.eval.synthetic import make_data  # noqa: E402
from multi_turboquant.formats.params import fit_channel_params  # noqa: E402

HEAD_DIMS = (64, 96, 128, 256)


def extreme_data(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """Rows at magnitudes whose squares leave float32 (1e-30 .. 1e37), and rows with one element
    near float32's maximum over N(0, 1) (the rest become subnormal after normalization)."""
    x = torch.randn(n, d, generator=g)
    scales = torch.tensor([2.0**-100, 1e-30, 1e20, 1e37])
    x = x * scales[torch.arange(n) % 4].unsqueeze(-1)
    x[::5, 0] = 3e38
    return x


def test_vector_mismatches(device: str) -> int:
    """Vectors in tests/vectors whose bytes differ when encoded on `device`."""
    import struct

    bad = 0
    for path in sorted(Path("tests/vectors").glob("*.json")):
        data = json.loads(path.read_text())
        fmt = mtq.get_format(data["format"])
        for e in data["vectors"]:
            d = e["head_dim"]
            x = torch.tensor([struct.unpack("<f", bytes.fromhex(h))[0] for h in e["input"]]).reshape(-1, d)
            params = mtq.ChannelParams.from_json(e["params"]) if "params" in e else None
            got = [bytes(r.tolist()) for r in fmt.encode(x.to(device), params).cpu()]
            bad += got != [bytes.fromhex(h) for h in e["packed"]]
    return bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    g = torch.Generator().manual_seed(7)
    results = []
    for name, fmt in mtq.FORMATS.items():
        for d in HEAD_DIMS:
            for kind in ("gaussian", "outliers", "extreme"):
                for dtype in (torch.float32, torch.bfloat16, torch.float16):
                    x = extreme_data(args.rows, d, g) if kind == "extreme" else make_data(kind, args.rows, d, g)
                    if kind == "extreme" and dtype != torch.float32:
                        continue  # float32-only magnitudes
                    x = x.to(dtype)
                    params = None
                    if kind == "outliers":
                        extra = {"n_outliers": 4} if fmt.family == "turboquant" else {"equalize": True}
                        params = fit_channel_params(x[:1000], center=True, **extra)
                    cpu = fmt.encode(x, params)
                    gpu = fmt.encode(x.to(dev), params).cpu()
                    rows_differ = int((cpu != gpu).any(-1).sum())
                    dec_cpu = fmt.decode(cpu, d, params=params)
                    dec_gpu = fmt.decode(cpu.to(dev), d, params=params).cpu()
                    results.append({"format": name, "head_dim": d, "data": kind, "dtype": str(dtype),
                                    "rows": args.rows, "rows_with_different_bytes": rows_differ,
                                    "decode_max_abs_diff": float((dec_cpu - dec_gpu).abs().max())})
    vec_bad = test_vector_mismatches(dev)
    # which float32 primitives differ between the CPU and the device (informs the encoder's design)
    a, b = torch.rand(1 << 24, generator=g) * 100, torch.rand(1 << 24, generator=g) * 100 + 1e-3
    arith = {
        "div": int(((a / b) != (a.to(dev) / b.to(dev)).cpu()).sum()),
        "sqrt": int((a.sqrt() != a.to(dev).sqrt().cpu()).sum()),
        "div_by_host_scalar_96": int(((a / 96) != (a.to(dev) / 96).cpu()).sum()),
        "mul": int(((a * b) != (a.to(dev) * b.to(dev)).cpu()).sum()),
    }
    # reference-codec speed on the device (not the fused kernels)
    x = torch.randn(1 << 20, 128, device=dev)
    speed = {}
    for name, fmt in mtq.FORMATS.items():
        fmt.decode(fmt.encode(x[:1024]), 128)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        p = fmt.encode(x)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        fmt.decode(p, 128)
        torch.cuda.synchronize()
        speed[name] = (t1 - t0, time.perf_counter() - t1)

    print("\n| format | cases | rows compared | rows with different bytes | max decode diff |")
    print("|---|---|---|---|---|")
    for name in mtq.FORMATS:
        rs = [r for r in results if r["format"] == name]
        print(f"| {name} | {len(rs)} | {sum(r['rows'] for r in rs)} | {sum(r['rows_with_different_bytes'] for r in rs)} "
              f"| {max(r['decode_max_abs_diff'] for r in rs):.3g} |")
    print(f"\ntest vectors encoded on {dev}: {vec_bad} mismatching entries")
    print(f"float32 results differing CPU vs {dev} out of {1 << 24}: {arith}")
    print("\n| format | encode 1M x d128 s (torch ref on GPU) | decode s |\n|---|---|---|")
    for name, (e, dd) in speed.items():
        print(f"| {name} | {e:.3f} | {dd:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "cases": results, "vector_mismatches": vec_bad, "arith": arith,
                                               "speed": speed}, indent=1))
    return 0 if vec_bad == 0 and all(r["rows_with_different_bytes"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
