"""Per-family codec functions with a `bits` argument: the body of `turbo_quant`, `iso_quant` and `planar_quant`."""
from __future__ import annotations

from typing import Callable

import torch

from .formats import ChannelParams, get_format


def codec(family: str, default_bits: int | str) -> tuple[Callable, Callable]:
    """encode/decode functions for one family; `bits` picks the member (e.g. 3 -> isoquant3)."""

    def encode(x: torch.Tensor, bits: int | str = default_bits, params: ChannelParams | None = None) -> torch.Tensor:
        """Encode (..., head_dim) vectors to packed uint8 (see docs/formats.md)."""
        return get_format(f"{family}{bits}").encode(x, params)

    def decode(packed: torch.Tensor, head_dim: int, bits: int | str = default_bits,
               dtype: torch.dtype = torch.float32, params: ChannelParams | None = None) -> torch.Tensor:
        """Decode packed uint8 back to (..., head_dim) vectors."""
        return get_format(f"{family}{bits}").decode(packed, head_dim, dtype, params)

    return encode, decode
