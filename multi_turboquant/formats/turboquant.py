"""TurboQuant: outlier/regular channel split, a randomized Hadamard rotation per half, Lloyd-Max
codes (one bit more on the outlier half), and a 1-bit QJL sign sketch of the residual.

Record (d = head_dim, h = d/2, m = 1 for turboquant25, 2 for turboquant35):
  [outlier-half codes, h*(m+1)/8 B][regular-half codes, h*m/8 B][QJL signs, d/8 B]
  [rho: bfloat16, sign bit = centroid flag][theta: uint8][beta: uint8]
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import prng
from .base import (
    KVFormat, bf16_bytes, bf16_from_bytes, bf16_sqrt, power_of_two_normalize, scalar_quantize, scale_by_power_of_two,
)
from .codebooks import count_prefix, dequantize
from .packing import pack, packed_bytes, unpack
from .params import ChannelParams
from .transforms import RandomizedHadamard, tree_sum

THETA_STEPS = 255  # theta code k -> angle k * (pi/2) / 255
BETA_LOG2_MIN, BETA_LOG2_MAX = -10.0, 2.0  # beta code k >= 1 -> rho * 2**(min + (k-1) * step)


@lru_cache(maxsize=None)
def _angle_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos/sin of the 256 theta levels and of the 255 midpoints between them (float32)."""
    step = (math.pi / 2) / THETA_STEPS
    lv = [prng.cos_sin(k * step) for k in range(THETA_STEPS + 1)]
    mid = [prng.cos_sin((k + 0.5) * step) for k in range(THETA_STEPS)]
    as32 = lambda vals: torch.tensor(vals, dtype=torch.float64).to(torch.float32)  # noqa: E731
    return as32([c for c, _ in lv]), as32([s for _, s in lv]), as32([c for c, _ in mid]), as32([s for _, s in mid])


@lru_cache(maxsize=None)
def _beta_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Relative beta levels (index 0 = exact zero, 1..255 geometric) and the 254 midpoints between 1..255."""
    step = (BETA_LOG2_MAX - BETA_LOG2_MIN) / 254
    g = [prng.exp2(BETA_LOG2_MIN + k * step) for k in range(255)]
    levels = torch.tensor([0.0] + g, dtype=torch.float64).to(torch.float32)
    mids = torch.tensor([(a + b) / 2 for a, b in zip(g[:-1], g[1:])], dtype=torch.float64).to(torch.float32)
    return levels, mids


def default_outlier_order(head_dim: int) -> list[int]:
    """Channels that fill the outlier half when calibration names fewer than d/2 (or none).

    The RoPE low-frequency half, [d/4, d/2) and [3d/4, d), where key outliers usually sit; it keeps
    each rotate-half RoPE pair (i, i + d/2) and each interleaved pair (2i, 2i+1) together.
    """
    q = head_dim // 4
    return list(range(q, 2 * q)) + list(range(3 * q, 4 * q))


def channel_permutation(head_dim: int, outliers: list[int] | None) -> list[int]:
    """Outlier half first (given channels in ascending order, then the default order), then the rest."""
    chosen = sorted(outliers or [])
    taken = set(chosen)
    for c in default_outlier_order(head_dim):
        if len(chosen) == head_dim // 2:
            break
        if c not in taken:
            chosen.append(c)
            taken.add(c)
    return chosen + [c for c in range(head_dim) if c not in taken]


class TurboQuant(KVFormat):
    family = "turboquant"
    flag_byte = 3  # rho's high byte, before theta and beta

    def __init__(self, mse_bits: int) -> None:
        self.mse_bits = mse_bits  # regular half; the outlier half gets one bit more
        self.bits = mse_bits + 1.5
        self.name = f"turboquant{mse_bits + 1}5"

    # -- layout ------------------------------------------------------------------------------------
    def _sections(self, head_dim: int) -> tuple[int, int, int]:
        h = head_dim // 2
        return packed_bytes(h, self.mse_bits + 1), packed_bytes(h, self.mse_bits), head_dim // 8

    def _bytes_per_vector(self, head_dim: int) -> int:
        return sum(self._sections(head_dim)) + 4

    def transforms(self, head_dim: int) -> tuple[RandomizedHadamard, RandomizedHadamard, RandomizedHadamard]:
        """(outlier-half rotation, regular-half rotation, QJL sketch), seeded per head_dim."""
        return _transforms(head_dim)

    # -- calibration: permute the outlier channels to the front ----------------------------------
    def _permutation(self, params: ChannelParams, head_dim: int, device: torch.device) -> torch.Tensor:
        if params.outliers is None:
            return torch.tensor(channel_permutation(head_dim, None), device=device)
        o = params.outliers
        perms = [channel_permutation(head_dim, row.tolist()) for row in o.reshape(-1, o.shape[-1])]
        return torch.tensor(perms, device=device).reshape(*o.shape[:-1], head_dim)

    def to_canonical(self, x: torch.Tensor, params: ChannelParams, head_dim: int) -> torch.Tensor:
        x = super().to_canonical(x, params, head_dim)
        perm = self._permutation(params, head_dim, x.device)
        return torch.gather(x, -1, perm.expand(x.shape))

    def from_canonical(self, x: torch.Tensor, params: ChannelParams, head_dim: int) -> torch.Tensor:
        perm = self._permutation(params, head_dim, x.device).expand(x.shape)
        x = torch.empty_like(x).scatter_(-1, perm, x)
        return super().from_canonical(x, params, head_dim)

    # -- codec -------------------------------------------------------------------------------------
    def _encode_rows(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        h = d // 2
        x, exponent = power_of_two_normalize(x)
        rot_o, rot_n, sketch = self.transforms(d)
        y_o, y_n = rot_o.forward(x[:, :h]), rot_n.forward(x[:, h:])
        codes_o, a_o = scalar_quantize(y_o, self.mse_bits + 1)
        codes_n, a_n = scalar_quantize(y_n, self.mse_bits)

        # Scales as polar (rho, theta): rho in bf16, theta on 256 levels of [0, pi/2].
        cos_lv, sin_lv, cos_mid, sin_mid = (t.to(x.device) for t in _angle_tables())
        rho = bf16_sqrt(a_o * a_o + a_n * a_n)
        theta = count_prefix(lambda j: a_n * cos_mid[j] > a_o * sin_mid[j], THETA_STEPS, a_o)
        a_o, a_n = rho * cos_lv[theta], rho * sin_lv[theta]

        residual = torch.cat((y_o - a_o * dequantize(codes_o, self.mse_bits + 1),
                              y_n - a_n * dequantize(codes_n, self.mse_bits)), dim=-1)
        w = sketch.forward(residual)
        # Least-squares scale of the sign vector (the sketch is orthonormal): mean |w|, as a product
        # with float32(1/d) -- CUDA turns division by a host scalar into that product, the CPU does not.
        beta = tree_sum(w.abs()) * torch.tensor(1.0 / d, dtype=torch.float32, device=x.device)
        beta_mid = _beta_tables()[1].to(x.device)
        beta_code = torch.where(beta > 0, 1 + count_prefix(lambda j: beta > rho * beta_mid[j], 254, beta), 0)

        rho_bytes = bf16_bytes(scale_by_power_of_two(rho, exponent))
        meta = torch.cat((rho_bytes, theta.to(torch.uint8), beta_code.to(torch.uint8)), dim=-1)
        signs = (w >= 0).to(torch.uint8)
        return torch.cat((pack(codes_o, self.mse_bits + 1), pack(codes_n, self.mse_bits), pack(signs, 1), meta), -1)

    def _decode_rows(self, packed: torch.Tensor, head_dim: int) -> torch.Tensor:
        h = head_dim // 2
        n_o, n_n, n_s = self._sections(head_dim)
        rot_o, rot_n, sketch = self.transforms(head_dim)
        codes_o = unpack(packed[:, :n_o], h, self.mse_bits + 1)
        codes_n = unpack(packed[:, n_o:n_o + n_n], h, self.mse_bits)
        signs = unpack(packed[:, n_o + n_n:n_o + n_n + n_s], head_dim, 1)
        meta = packed[:, -4:]
        rho = bf16_from_bytes(meta[:, :2])
        theta, beta_code = meta[:, 2:3].long(), meta[:, 3:4].long()
        cos_lv, sin_lv = (t.to(packed.device) for t in _angle_tables()[:2])
        beta_rel = _beta_tables()[0].to(packed.device)[beta_code]
        # everything relative to rho, scaled at the end: no intermediate overflow near float32's maximum
        y = torch.cat((cos_lv[theta] * dequantize(codes_o, self.mse_bits + 1),
                       sin_lv[theta] * dequantize(codes_n, self.mse_bits)), dim=-1)
        y = y + beta_rel * sketch.inverse(signs.to(torch.float32) * 2 - 1)
        return torch.cat((rot_o.inverse(y[:, :h]), rot_n.inverse(y[:, h:])), dim=-1) * rho


@lru_cache(maxsize=None)
def _transforms(head_dim: int) -> tuple[RandomizedHadamard, RandomizedHadamard, RandomizedHadamard]:
    h = head_dim // 2
    return (RandomizedHadamard(f"mtq/v1/turboquant/d{head_dim}/outlier", h),
            RandomizedHadamard(f"mtq/v1/turboquant/d{head_dim}/regular", h),
            RandomizedHadamard(f"mtq/v1/turboquant/d{head_dim}/qjl", head_dim))
