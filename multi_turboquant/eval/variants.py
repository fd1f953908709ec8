"""Prototype rows for format spec v2 (not formats of this build): what limits the formats, measured.

* `turboquant{25,35}-mse`: TurboQuant with its QJL bits spent on the MSE stage instead (outlier/regular
  halves at m+2 / m+1 bits, same rotations, channel split, calibration and record size: the d/8 sign bytes
  become one more code bit per coordinate; the 4 metadata bytes stay). Decoded values only, no byte layout.
* `... K only` / `... V only`: one stream in the format, the other in bf16 (where the loss comes from).
* `... +sink`: the first token of each sequence kept exact (a token-position policy the vLLM plugin
  cannot carry; measured to show how much of the loss is the attention sink).
"""
from __future__ import annotations

import torch

from ..formats import ChannelParams, get_format
from ..formats.base import scalar_quantize
from ..formats.codebooks import dequantize
from .codecs import BF16, Codec, format_codec
from .hooks import Scheme


def mse_turboquant(name: str) -> Codec:
    """TurboQuant `name` without QJL, one more Lloyd-Max bit on each half (same bytes per vector); a prototype of
    format version 1: it applies the offset and outliers of a calibration, not its centroid."""
    fmt = get_format(name)

    def roundtrip(x: torch.Tensor, params: ChannelParams | None, positions: torch.Tensor | None = None) -> torch.Tensor:
        d, h = x.shape[-1], x.shape[-1] // 2
        p = (params.at(positions) if positions is not None else params) if params is not None else ChannelParams()
        canon = fmt.to_canonical(x.float(), p, d)
        rot_o, rot_n, _ = fmt.transforms(d)
        parts = []
        for rot, half, bits in ((rot_o, canon[..., :h], fmt.mse_bits + 2), (rot_n, canon[..., h:], fmt.mse_bits + 1)):
            codes, alpha = scalar_quantize(rot.forward(half.reshape(-1, h)), bits)
            parts.append(rot.inverse(alpha.to(torch.bfloat16).float() * dequantize(codes, bits)).reshape(half.shape))
        return fmt.from_canonical(torch.cat(parts, -1), p, d)

    return Codec(f"{name}-mse", fmt.family, fmt.bytes_per_vector, roundtrip)


def variant_schemes(formats: list[str]) -> list[Scheme]:
    """Calibrated variant rows for the given formats: MSE-only TurboQuant, then +sink, K only, V only."""
    codecs = [format_codec(name) for name in formats]
    mse = [mse_turboquant(c.name) for c in codecs if c.family == "turboquant"]
    rows = [Scheme(f"{m.name} +calib", m, m, "variant", calibrated=True) for m in mse]
    rows += [Scheme(f"{c.name} +calib +sink", c, c, "variant", calibrated=True, exact_prefix=1) for c in codecs]
    for c in codecs:
        rows += [Scheme(f"{c.name} +calib K only", c, BF16, "variant", calibrated=True),
                 Scheme(f"{c.name} +calib V only", BF16, c, "variant", calibrated=True)]
    return rows
