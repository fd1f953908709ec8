"""Lloyd-Max codebooks for N(0, 1) and nearest-level quantization by boundary comparison.

The level tables below are the format constants (spec, docs/formats.md): the float32 values nearest
to these decimals. `lloyd_max_gaussian` regenerates them (tests check the tables against it).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch

# Positive half of each symmetric codebook, ascending; the full codebook is (-reversed, +).
LLOYD_MAX_POSITIVE: dict[int, tuple[float, ...]] = {
    1: (0.797884561,),
    2: (0.452780035, 1.51041761),
    3: (0.245094179, 0.756005281, 1.34390928, 2.1519457),
    4: (0.12839503, 0.388048299, 0.656759119, 0.942340456,
        1.2562312, 1.61804639, 2.06901723, 2.73258957),
}
# Mean squared error per coordinate of each codebook on N(0, 1).
LLOYD_MAX_DISTORTION = {1: 0.36338023, 2: 0.11748185, 3: 0.03454776, 4: 0.00950101}


def lloyd_max_gaussian(levels: int, iterations: int = 20000) -> list[float]:
    """Lloyd's algorithm on the standard normal density, in float64 (the generator of the tables)."""
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    c = [-3 + 6 * (i + 0.5) / levels for i in range(levels)]
    for _ in range(iterations):
        b = [-math.inf] + [(c[i] + c[i + 1]) / 2 for i in range(levels - 1)] + [math.inf]
        new = []
        for lo, hi in zip(b[:-1], b[1:]):
            mass = cdf(hi) - cdf(lo)
            first_moment = (pdf(lo) if lo > -math.inf else 0.0) - (pdf(hi) if hi < math.inf else 0.0)
            new.append(first_moment / mass)
        if max(abs(a - o) for a, o in zip(new, c)) < 1e-15:
            return new
        c = new
    return c


@lru_cache(maxsize=None)
def _tables(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    if bits not in LLOYD_MAX_POSITIVE:
        raise ValueError(f"no Lloyd-Max codebook for {bits} bits (have {sorted(LLOYD_MAX_POSITIVE)})")
    pos = torch.tensor(LLOYD_MAX_POSITIVE[bits], dtype=torch.float32)
    levels = torch.cat((-pos.flip(0), pos))
    boundaries = (levels[:-1] + levels[1:]) * 0.5
    return levels, boundaries


def levels(bits: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """All 2**bits reconstruction levels, ascending, float32."""
    return _tables(bits)[0].to(device)


def boundaries(bits: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 2**bits - 1 decision boundaries (float32 midpoints of adjacent levels)."""
    return _tables(bits)[1].to(device)


def quantize(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Index of the nearest level: the count of boundaries strictly below u (ties go down). uint8."""
    b = boundaries(bits, u.device)
    codes = torch.zeros(u.shape, dtype=torch.uint8, device=u.device)
    for t in b:  # 2**bits - 1 comparisons; exact on every device
        codes += (u > t).to(torch.uint8)
    return codes


def count_prefix(pred: Callable[[torch.Tensor], torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
    """For predicates true on a prefix of j = 0..n-1, the prefix length, by binary search.

    pred(j) takes an int64 index tensor shaped like `like` and returns a bool tensor; the result
    equals the count of true predicates, in ceil(log2(n + 1)) evaluations instead of n.
    """
    k = torch.zeros(like.shape, dtype=torch.int64, device=like.device)
    step = 1 << (n.bit_length() - 1)
    while step:
        cand = k + step
        ok = cand <= n
        k = torch.where(ok & pred((cand - 1).clamp_max(n - 1)), cand, k)
        step >>= 1
    return k


# Encoder search: the unit-RMS vector is also tried at these relative scales (the one with the
# smallest least-squares error wins); decoding does not depend on the choice.
SCALE_CANDIDATES = (0.75, 0.836, 0.931, 1.038, 1.156, 1.289, 1.436, 1.6)


@lru_cache(maxsize=None)
def _scaled_thresholds(bits: int) -> torch.Tensor:
    """(candidates, boundaries) float32: t*|t|*c*c in float64 (t the float32 boundary), rounded once."""
    t = boundaries(bits).to(torch.float64)
    c = torch.tensor(SCALE_CANDIDATES, dtype=torch.float64)[:, None]
    return (t * t.abs() * c * c).to(torch.float32)


def quantize_scaled(y: torch.Tensor, sq: torch.Tensor, bits: int, candidate: int) -> torch.Tensor:
    """quantize(y * sqrt(n / sq) / c) without sqrt or division: count t with y|y|n > (t|t|c^2) sq.

    y: (rows, n); sq: (rows, 1) = sum of y**2; c = SCALE_CANDIDATES[candidate]. Only IEEE products
    and comparisons, so every device gives the same codes (CUDA's sqrt differs from the CPU's in
    the last bit for ~0.6% of inputs). The per-row thresholds are sorted, so a binary search
    (searchsorted: the count of thresholds strictly below) finds each code.
    """
    n = y.shape[-1]
    thresholds = _scaled_thresholds(bits)[candidate].to(y.device)
    lhs = y * y.abs() * torch.tensor(float(n), dtype=torch.float32, device=y.device)
    return torch.searchsorted(thresholds * sq, lhs).to(torch.uint8)


def dequantize(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Level values for codes, float32."""
    return levels(bits, codes.device)[codes.long()]
