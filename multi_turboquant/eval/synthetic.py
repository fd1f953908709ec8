"""Round-trip and attention error of every format on synthetic K/V, next to int4 and fp8 baselines."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..formats import FORMATS, ChannelParams, KVFormat
from ..formats.params import fit_channel_params
from .baselines import BASELINES

OUTLIER_CHANNELS = 4  # "a few coordinates at 10-50x scale", fixed per head as after RoPE


def make_data(kind: str, n: int, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """'gaussian': N(0, 1); 'outliers': the same with 4 fixed channels scaled by 10, 23, 37 and 50."""
    x = torch.randn(n, head_dim, generator=generator)
    if kind == "outliers":
        channels = torch.linspace(0, head_dim - 1, OUTLIER_CHANNELS + 2)[1:-1].round().long() + 1
        x[:, channels] *= torch.linspace(10, 50, OUTLIER_CHANNELS)
    elif kind != "gaussian":
        raise ValueError(f"unknown data kind {kind!r}; expected 'gaussian' or 'outliers'")
    return x


@dataclass
class Row:
    data: str
    method: str
    bits: float
    cosine: float
    rel_mse: float
    attn_err: float


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temp: float) -> torch.Tensor:
    return torch.softmax(q @ k.T * temp, dim=-1) @ v


def _metrics(k: torch.Tensor, v: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, q: torch.Tensor,
             temp: float) -> tuple[float, float, float]:
    ref = _attention(q, k, v, temp)
    out = _attention(q, kh, vh, temp)
    cos = torch.nn.functional.cosine_similarity(k, kh, dim=-1).mean().item()
    mse = ((kh - k) ** 2).sum().item() / (k**2).sum().item()
    return cos, mse, ((out - ref).norm() / ref.norm()).item()


def quality_table(head_dim: int = 128, n_tokens: int = 4096, n_queries: int = 256, seed: int = 0,
                  calibrated: bool = True) -> list[Row]:
    """Keys from each data kind, values N(0, 1), queries N(0, 9) with scores scaled to unit key norm.

    'cosine' and 'rel_mse' are of the keys; 'attn_err' is ||softmax(qK^T)V - ref|| / ||ref|| with
    both K and V quantized, against fp32 attention. Calibrated rows fit ChannelParams on a separate
    sample of the same distribution (per-channel RMS scale; for TurboQuant, the 4 outlier channels).
    """
    g = torch.Generator().manual_seed(seed)
    rows: list[Row] = []
    for kind in ("gaussian", "outliers"):
        k = make_data(kind, n_tokens, head_dim, g)
        v = torch.randn(n_tokens, head_dim, generator=g)
        q = 3.0 * torch.randn(n_queries, head_dim, generator=g)
        temp = 1.0 / k.norm(dim=-1).mean().item()
        calib_sample = make_data(kind, 2048, head_dim, g)
        for name, fmt in FORMATS.items():
            variants: list[tuple[str, ChannelParams | None]] = [(name, None)]
            if calibrated:
                variants.append((f"{name} +calib scale", fit_channel_params(calib_sample, equalize=True)))
                if fmt.family == "turboquant":
                    variants.append((f"{name} +calib outliers",
                                     fit_channel_params(calib_sample, n_outliers=OUTLIER_CHANNELS)))
            for label, params in variants:
                kh = fmt.decode(fmt.encode(k, params), head_dim, params=params)
                vh = fmt.decode(fmt.encode(v), head_dim)
                rows.append(Row(kind, label, fmt.bits_per_coordinate(head_dim), *_metrics(k, v, kh, vh, q, temp)))
        for b in BASELINES:
            rows.append(Row(kind, b.name, b.bits_per_coordinate(head_dim),
                            *_metrics(k, v, b.roundtrip(k), b.roundtrip(v), q, temp)))
    return rows


def format_rows(rows: list[Row]) -> str:
    """Markdown table of quality rows."""
    out = ["| data | method | bits/coord (incl. metadata) | key cosine | key rel. MSE | attention rel. error |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r.data} | {r.method} | {r.bits:.3f} | {r.cosine:.4f} | {r.rel_mse:.4f} | {r.attn_err:.4f} |"
            for r in rows]
    return "\n".join(out)


def throughput(fmt: KVFormat, n_vectors: int = 1 << 20, head_dim: int = 128, seed: int = 0) -> tuple[float, float]:
    """Seconds to encode and to decode n_vectors fp32 vectors on the CPU (one pass each)."""
    x = torch.randn(n_vectors, head_dim, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    packed = fmt.encode(x)
    t1 = time.perf_counter()
    fmt.decode(packed, head_dim)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1



__all__ = ["Row", "format_rows", "make_data", "quality_table", "throughput"]
