"""K/V round-trip codecs compared in `mtq eval quality`: this project's formats and the baselines.

A codec maps (..., heads, head_dim) float32 to what a decoder reads back from the cache, and knows its
bytes per head vector. vLLM's TurboQuant presets live in `presets.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..formats import ChannelParams, KVFormat, get_format

FP8_E4M3_MAX = 448.0


@dataclass(frozen=True)
class Codec:
    """One way to store a head vector: `roundtrip(x, params)` and its size."""

    name: str
    family: str  # a format family (reads calibration) or "baseline"
    nbytes: Callable[[int], int]
    roundtrip: Callable[[torch.Tensor, ChannelParams | None], torch.Tensor]


def format_codec(fmt: KVFormat | str) -> Codec:
    """One of the six formats: encoded by `kernels.ops.encode` (the store kernel on CUDA, the same bytes as the
    reference codec elsewhere), decoded by the reference codec."""
    from ..kernels import ops

    fmt = get_format(fmt) if isinstance(fmt, str) else fmt

    def roundtrip(x: torch.Tensor, params: ChannelParams | None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., heads, d) at `positions` (x's leading dims; needed by a position_offset) -> decoded."""
        decoded = params.at(positions) if params is not None and params.positional else params
        return fmt.decode(ops.encode(x, fmt.name, params, positions), x.shape[-1], params=decoded)

    return Codec(fmt.name, fmt.family, fmt.bytes_per_vector, roundtrip)


def _bf16(x: torch.Tensor, params: ChannelParams | None = None) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def fp8_e4m3(x: torch.Tensor, params: ChannelParams | None = None) -> torch.Tensor:
    """float8 e4m3 with one scale for the whole tensor handed over (amax / 448)."""
    scale = x.abs().amax().clamp_min(1e-12) / FP8_E4M3_MAX
    return (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale


def uniform(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min/max uniform quantization per vector, fp16 scale and zero (vLLM's value recipe).

    scale = (max - min) / (2^b - 1) (at least 1e-8), q = floor((x - min) / scale + 0.5) clamped, both
    computed in float32; the decoder reads q * fp16(scale) + fp16(min).
    """
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    top = 2**bits - 1
    scale = ((hi - lo) / top).clamp_min(1e-8)
    q = torch.floor((x - lo) / scale + 0.5).clamp(0, top)
    return q * scale.to(torch.float16).float() + lo.to(torch.float16).float()


def uniform_bytes(bits: int) -> Callable[[int], int]:
    """Bytes of a `uniform` record: packed codes plus fp16 scale and zero."""
    return lambda d: math.ceil(d * bits / 8) + 4


BF16 = Codec("bf16", "baseline", lambda d: 2 * d, _bf16)
FP8 = Codec("fp8 e4m3 (per-tensor scale)", "baseline", lambda d: d, fp8_e4m3)
INT8 = Codec("int8 per-token-head", "baseline", uniform_bytes(8), lambda x, p=None: uniform(x, 8))
INT4 = Codec("int4 per-token-head", "baseline", uniform_bytes(4), lambda x, p=None: uniform(x, 4))
