"""IsoQuant and PlanarQuant: a fixed random rotation per block of 4 (or 2) coordinates, then a
Lloyd-Max codebook on the unit-RMS rotated vector with a least-squares bf16 scale.

Record: [code planes, d*b/8 bytes][scale: bfloat16, 2 bytes; sign bit = centroid flag].
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .base import (
    KVFormat, bf16_bytes, bf16_from_bytes, power_of_two_normalize, scalar_quantize, scale_by_power_of_two,
)
from .codebooks import dequantize
from .packing import pack, packed_bytes, unpack
from .params import ChannelParams
from .transforms import BlockRotation, givens_blocks, quaternion_blocks


class BlockRotationFormat(KVFormat):
    """Shared codec of the iso (4-D blocks) and planar (2-D blocks) families."""

    flag_byte = 1  # the scale's high byte ends the record

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"{self.family}{bits}"

    def rotation(self, head_dim: int) -> BlockRotation:
        return _rotation(self.family, head_dim)

    def _check_params(self, params: ChannelParams | None, head_dim: int) -> ChannelParams:
        params = super()._check_params(params, head_dim)
        if params.outliers is not None:
            raise ValueError(f"{self.name}: outlier channels apply to the turboquant formats only")
        return params

    def _bytes_per_vector(self, head_dim: int) -> int:
        return packed_bytes(head_dim, self.bits) + 2

    def _encode_rows(self, x: torch.Tensor) -> torch.Tensor:
        x, exponent = power_of_two_normalize(x)
        codes, alpha = scalar_quantize(self.rotation(x.shape[-1]).forward(x), self.bits)
        return torch.cat((pack(codes, self.bits), bf16_bytes(scale_by_power_of_two(alpha, exponent))), dim=-1)

    def _decode_rows(self, packed: torch.Tensor, head_dim: int) -> torch.Tensor:
        codes = unpack(packed[:, :-2], head_dim, self.bits)
        # rotate at unit scale, then scale: no intermediate overflow near float32's largest values
        return self.rotation(head_dim).inverse(dequantize(codes, self.bits)) * bf16_from_bytes(packed[:, -2:])


class IsoQuant(BlockRotationFormat):
    """4-D rotation x -> qL * x * qR (two unit quaternions, random per block of 4)."""

    family = "isoquant"


class PlanarQuant(BlockRotationFormat):
    """2-D Givens rotation, random angle per pair of coordinates."""

    family = "planarquant"


@lru_cache(maxsize=None)
def _rotation(family: str, head_dim: int) -> BlockRotation:
    label = f"mtq/v1/{family}/d{head_dim}"
    if family == "isoquant":
        return BlockRotation(quaternion_blocks(label, head_dim // 4))
    return BlockRotation(givens_blocks(label, head_dim // 2))
