"""Reference quantizers that the formats are compared with (not KV formats of this project)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Baseline:
    name: str
    bits_per_coordinate: Callable[[int], float]
    roundtrip: Callable[[torch.Tensor], torch.Tensor]


def int4_per_token(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric 4-bit per vector, fp16 scale and zero point (min/max)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).to(torch.float16).float().clamp_min(1e-8)
    zero = lo.to(torch.float16).float()
    q = torch.round((x - zero) / scale).clamp(0, 15)
    return q * scale + zero


def fp8_e4m3_per_tensor(x: torch.Tensor) -> torch.Tensor:
    """float8 e4m3 with one per-tensor scale (amax / 448)."""
    scale = x.abs().amax().clamp_min(1e-12) / 448.0
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


BASELINES = (
    Baseline("int4 per-token (fp16 scale+zero)", lambda d: 4 + 32 / d, int4_per_token),
    Baseline("fp8 e4m3 (per-tensor scale)", lambda d: 8.0, fp8_e4m3_per_tensor),
)
