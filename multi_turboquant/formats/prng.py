"""Portable pseudo-random constants: integer SplitMix64 plus IEEE basic arithmetic only.

Every format constant (sign vectors, rotation blocks) is drawn here, on the host, in float64 with
+, -, *, / and sqrt alone (all correctly rounded in IEEE 754), so the values are bit-identical on
every machine and device. torch's CPU/CUDA generators are never used for format constants.
"""
from __future__ import annotations

import math
from functools import lru_cache

MASK64 = (1 << 64) - 1


def fnv1a64(label: str) -> int:
    """64-bit FNV-1a hash of a UTF-8 label; turns names like 'isoquant/d128' into seeds."""
    h = 0xCBF29CE484222325
    for byte in label.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


class SplitMix64:
    """SplitMix64 (Steele, Lea, Flood 2014): one 64-bit output per call."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """Uniform in [0, 1): the top 53 bits of one output, exact in float64."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


@lru_cache(maxsize=None)
def signs(label: str, n: int) -> tuple[float, ...]:
    """n random signs (+1.0 / -1.0): the top bit of each SplitMix64 output (1 -> -1.0)."""
    rng = SplitMix64(fnv1a64(label))
    return tuple(-1.0 if rng.next_u64() >> 63 else 1.0 for _ in range(n))


def unit_vector(rng: SplitMix64, k: int) -> tuple[float, ...]:
    """A uniformly random unit vector in R^k by rejection from the cube [-1, 1)^k."""
    while True:
        v = [2.0 * rng.uniform() - 1.0 for _ in range(k)]
        s = 0.0
        for c in v:
            s += c * c
        if 1e-12 < s <= 1.0:
            r = math.sqrt(s)
            return tuple(c / r for c in v)


@lru_cache(maxsize=None)
def unit_vectors(label: str, count: int, k: int) -> tuple[tuple[float, ...], ...]:
    """`count` independent unit vectors in R^k from one labelled stream."""
    rng = SplitMix64(fnv1a64(label))
    return tuple(unit_vector(rng, k) for _ in range(count))


def exp2(x: float) -> float:
    """2**x for real x from integer powers and a fixed Taylor series (portable, no libm)."""
    n = math.floor(x)
    t = (x - n) * 0.6931471805599453  # ln 2
    term, total = 1.0, 1.0
    for i in range(1, 30):
        term = term * t / i
        total += term
    return math.ldexp(total, n)


def cos_sin(angle: float) -> tuple[float, float]:
    """cos and sin of an angle in [0, pi/2] from fixed Taylor series (portable, no libm)."""
    c, s = 1.0, 0.0
    term = 1.0
    for i in range(1, 40):
        term = term * angle / i
        if i % 4 == 1:
            s += term
        elif i % 4 == 2:
            c -= term
        elif i % 4 == 3:
            s -= term
        else:
            c += term
    return c, s
