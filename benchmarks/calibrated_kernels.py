"""The Triton store and attention kernels against the torch reference on a real model's K/V with its calibration.

Captures post-RoPE Q/K/V of every layer of a Hugging Face causal LM on a slice of text, stores them with each
format and the layer's calibration (offset, scale, key centroid) by the Triton store kernel and by the reference,
and runs paged attention (a decode and a chunked prefill) through the Triton kernels and the reference. Prints per
format the records that differ and the worst relative errors, kernel vs reference and each vs exact attention.

    python benchmarks/calibrated_kernels.py MODEL turboquant_kv.json [--tokens 512] [--device cuda]
    python benchmarks/calibrated_kernels.py MODEL turboquant_kv.json --save qkv.pt   # capture here (bf16) ...
    python benchmarks/calibrated_kernels.py qkv.pt turboquant_kv.json                # ... check there (no model)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from multi_turboquant.eval.corpus import load_text  # noqa: E402
from multi_turboquant.eval.hooks import load_model  # noqa: E402
from multi_turboquant.formats import get_format  # noqa: E402
from multi_turboquant.formats.calibration import load_calibration  # noqa: E402
from multi_turboquant.kernels import naive, triton_store  # noqa: E402
from multi_turboquant.kernels.layout import KVCacheLayout  # noqa: E402
from multi_turboquant.kernels.triton_attention import paged_attention  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="Hugging Face model folder, or a capture written by --save")
    ap.add_argument("calibration")
    ap.add_argument("--text")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--prefill", type=int, default=128, help="query tokens of the chunked-prefill case")
    ap.add_argument("--formats", default="isoquant3,isoquant4,planarquant3,planarquant4,turboquant25,turboquant35")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    ap.add_argument("--save", help="only capture Q/K/V (bfloat16) to this file")
    a = ap.parse_args()
    cal = load_calibration(a.calibration)
    if Path(a.model).is_file():
        seen = {L: tuple(t.to(a.device, torch.float32) for t in qkv) for L, qkv in torch.load(a.model).items()}
    else:
        lm = load_model(a.model, a.device)
        ids = lm.tokenizer(load_text(a.text)[0], return_tensors="pt").input_ids[0][:a.tokens]
        seen = {}
        lm.hook.observe = lambda layer, q, k, v: seen.__setitem__(layer, tuple(t[0].transpose(0, 1).float()
                                                                               for t in (q, k, v)))
        with torch.no_grad():
            lm.model(ids[None].to(lm.device), use_cache=False)
        if a.save:
            torch.save({L: tuple(t.to(torch.bfloat16).cpu() for t in qkv) for L, qkv in seen.items()}, a.save)
            return
    device = next(iter(seen.values()))[0].device
    layers = [int(i) for i in a.layers.split(",")] if a.layers else sorted(seen)
    print("| format | records differing | kernel vs reference (worst layer) | reference vs exact | kernel vs exact |")
    print("|---|---|---|---|---|")
    for fmt in a.formats.split(","):
        family = get_format(fmt).family
        differ, worst = 0, [0.0, 0.0, 0.0]
        for L in layers:
            q, k, v = seen[L]
            t, heads, d = k.shape
            kp, vp = (None if p is None else p.map(lambda x: x.to(device)) for p in cal.layer(L, family))
            layout = KVCacheLayout(fmt, fmt, d, heads, 16)
            blocks = -(-t // 16)
            table = torch.arange(blocks, dtype=torch.int32, device=device)[None]
            slots = torch.arange(t, device=device)
            caches = [torch.full(layout.shape(blocks), 0xFF, dtype=torch.uint8, device=device) for _ in range(2)]
            triton_store.store(k, v, caches[0], slots, layout, kp, vp)
            naive.store(k, v, caches[1], slots, layout, kp, vp)
            differ += int((caches[0] != caches[1]).any(-1).sum())
            for n in (1, a.prefill):
                args = (q[t - n:], caches[1], layout, table, torch.tensor([t], dtype=torch.int32, device=device),
                        torch.tensor([0, n], dtype=torch.int32, device=device), d ** -0.5, kp, vp)
                ref, out = naive.paged_attention(*args), paged_attention(*args)
                exact = naive.attend(q[t - n:], k, v, d ** -0.5, t - n)
                errs = (rel(out, ref), rel(ref, exact), rel(out, exact))
                worst = [max(w, e) for w, e in zip(worst, errs)]
        print(f"| {fmt} | {differ} | {worst[0]:.2e} | {worst[1]:.3f} | {worst[2]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
