"""Orthogonal transforms and reductions written as fixed-order elementwise arithmetic.

Nothing here uses matmul or torch's reduction kernels: every sum is a fixed binary tree of float32
additions, so the same input gives bit-identical results on every device (the encoder's contract).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import prng


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by pairwise halving (zero-padded to a power of two); keeps the dim."""
    n = x.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    if size != n:
        x = torch.nn.functional.pad(x, (0, size - n))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x


def power_of_two_blocks(n: int) -> tuple[int, ...]:
    """Binary decomposition of n, largest block first (96 -> (64, 32), 48 -> (32, 16))."""
    return tuple(1 << k for k in reversed(range(n.bit_length())) if n >> k & 1)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform (Sylvester order) over a power-of-two last dim."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < n:
        x = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = x[..., 0, :], x[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class RandomizedHadamard:
    """x -> blockdiag(H_k / sqrt(k)) (signs * x): orthonormal, with power-of-two blocks."""

    def __init__(self, label: str, n: int) -> None:
        self.n = n
        self.blocks = power_of_two_blocks(n)
        self.signs = torch.tensor(prng.signs(label, n), dtype=torch.float32)
        self.scales = [1.0 / math.sqrt(k) for k in self.blocks]

    def _blockwise(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, list(self.blocks), dim=-1)
        return torch.cat([_fwht(p) * s for p, s in zip(parts, self.scales)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._blockwise(x * self.signs.to(x.device))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._blockwise(y) * self.signs.to(y.device)


class BlockRotation:
    """Independent k x k rotations on consecutive blocks of k coordinates (k = 2 or 4).

    y[b, i] = sum_j M[b, i, j] x[b, j], summed in the order j = 0, 1, ..., k-1.
    """

    def __init__(self, matrices: torch.Tensor) -> None:
        self.matrices = matrices  # (blocks, k, k) float32
        self.k = matrices.shape[-1]

    @staticmethod
    def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k = m.shape[-1]
        xb = x.reshape(*x.shape[:-1], m.shape[0], k)
        out = []
        for i in range(k):
            acc = m[:, i, 0] * xb[..., 0]
            for j in range(1, k):
                acc = acc + m[:, i, j] * xb[..., j]
            out.append(acc)
        return torch.stack(out, dim=-1).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(self.matrices.to(x.device), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(self.matrices.transpose(1, 2).to(y.device), y)


def _left_matrix(q: tuple[float, ...]) -> list[list[float]]:
    """Matrix of x -> q * x (Hamilton product), q = (w, x, y, z)."""
    a, b, c, d = q
    return [[a, -b, -c, -d], [b, a, -d, c], [c, d, a, -b], [d, -c, b, a]]


def _right_matrix(q: tuple[float, ...]) -> list[list[float]]:
    """Matrix of x -> x * q (Hamilton product)."""
    a, b, c, d = q
    return [[a, -b, -c, -d], [b, a, d, -c], [c, -d, a, b], [d, c, -b, a]]


def _matmul4(p: list[list[float]], q: list[list[float]]) -> list[list[float]]:
    return [[sum(p[i][t] * q[t][j] for t in range(4)) for j in range(4)] for i in range(4)]


@lru_cache(maxsize=None)
def quaternion_blocks(label: str, blocks: int) -> torch.Tensor:
    """SO(4) block matrices x -> qL * x * qR, one random (qL, qR) pair per block (isoclinic parts)."""
    qs = prng.unit_vectors(label, 2 * blocks, 4)
    mats = [_matmul4(_left_matrix(qs[2 * b]), _right_matrix(qs[2 * b + 1])) for b in range(blocks)]
    return torch.tensor(mats, dtype=torch.float64).to(torch.float32)


@lru_cache(maxsize=None)
def givens_blocks(label: str, blocks: int) -> torch.Tensor:
    """2 x 2 Givens rotations [[c, -s], [s, c]], one random angle per pair of coordinates."""
    mats = [[[c, -s], [s, c]] for c, s in prng.unit_vectors(label, blocks, 2)]
    return torch.tensor(mats, dtype=torch.float64).to(torch.float32)
