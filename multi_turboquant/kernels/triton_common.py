"""In-kernel decoding of packed records into feature tiles (see feature_space.py), plus the host-side
description each kernel needs of a format: sizes as constexprs and one float32 table of constants."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..formats.codebooks import levels
from ..formats.registry import get_format
from ..formats.turboquant import TurboQuant, _angle_tables, _beta_tables

# Offsets in the constants table: level row b (b = 1..4 bits, row 0 = the QJL signs -1, +1),
# then cos and sin of the 256 theta levels, then the 256 relative beta levels.
LEVELS_ROW = 16
COS_AT, SIN_AT, BETA_AT = 5 * LEVELS_ROW, 5 * LEVELS_ROW + 256, 5 * LEVELS_ROW + 512
_COS, _SIN, _BETA = tl.constexpr(COS_AT), tl.constexpr(SIN_AT), tl.constexpr(BETA_AT)
SUPPORTED_HEAD_DIMS = (32, 64, 128, 256)
NO_WINDOW = 1 << 30  # the kernels' sliding window for full attention: longer than any sequence


@dataclass(frozen=True)
class RecordSpec:
    """Feature parts of one format's record: A (n_a codes of bits_a), B (n_b of bits_b), C (n_c signs)."""

    n_a: int
    bits_a: int
    n_b: int
    bits_b: int
    n_c: int
    turbo: bool
    nbytes: int

    def constexprs(self, prefix: str) -> dict[str, int]:
        return {f"{prefix}{k}": int(v) for k, v in
                (("NA", self.n_a), ("BA", self.bits_a), ("NB", self.n_b), ("BB", self.bits_b), ("NC", self.n_c),
                 ("TURBO", self.turbo), ("REC", self.nbytes))}


def check_head_dim(head_dim: int) -> None:
    """ValueError for head sizes the attention kernels do not handle."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"triton attention: unsupported head_dim {head_dim}; "
                         f"supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")


def record_spec(name: str, head_dim: int) -> RecordSpec:
    """The parts of format `name` at `head_dim`; ValueError for head sizes the kernels do not handle."""
    fmt = get_format(name)
    check_head_dim(head_dim)
    nbytes = fmt.bytes_per_vector(head_dim)
    if isinstance(fmt, TurboQuant):
        h = head_dim // 2
        return RecordSpec(h, fmt.mse_bits + 1, h, fmt.mse_bits, head_dim, True, nbytes)
    return RecordSpec(head_dim, fmt.bits, 0, 0, 0, False, nbytes)


@lru_cache(maxsize=None)
def _constants_cpu() -> torch.Tensor:
    table = torch.zeros(BETA_AT + 256, dtype=torch.float32)
    table[0:2] = torch.tensor([-1.0, 1.0])
    for bits in range(1, 5):
        table[bits * LEVELS_ROW: bits * LEVELS_ROW + (1 << bits)] = levels(bits)
    cos_lv, sin_lv = _angle_tables()[:2]
    table[COS_AT:COS_AT + 256], table[SIN_AT:SIN_AT + 256] = cos_lv, sin_lv
    table[BETA_AT:] = _beta_tables()[0]
    return table


_DEVICE_CONSTANTS: dict[torch.device, torch.Tensor] = {}


def constants(device: torch.device) -> torch.Tensor:
    """The constants table on `device` (built once per device)."""
    if device not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[device] = _constants_cpu().to(device)
    return _DEVICE_CONSTANTS[device]


@triton.jit
def _plane(rows, valid, OFF: tl.constexpr, N: tl.constexpr, W: tl.constexpr):
    """(BLOCK_N, N) int32 codes of a W-bit plane starting OFF bytes into each record."""
    i = tl.arange(0, N)
    byte = tl.load(rows[:, None] + (OFF + i // (8 // W))[None, :], mask=valid[:, None], other=0).to(tl.int32)
    PER: tl.constexpr = 8 // W
    return (byte >> ((tl.arange(0, N) % PER) * W)[None, :]) & ((1 << W) - 1)


@triton.jit
def _part(rows, valid, table, OFF: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr, ROW: tl.constexpr):
    """(BLOCK_N, N) float32 codebook levels (table row ROW) of N BITS-bit codes at byte OFF."""
    if BITS == 3:
        code = _plane(rows, valid, OFF, N, 2) | (_plane(rows, valid, OFF + N // 4, N, 1) << 2)
    else:
        code = _plane(rows, valid, OFF, N, BITS)
    return tl.load(table + ROW * 16 + code)


@triton.jit
def _scale(rows, valid, OFF: tl.constexpr):
    """A record's bfloat16 scale at byte OFF, its sign bit cleared, and that bit (the centroid flag) as 0.0/1.0."""
    lo = tl.load(rows + OFF, mask=valid, other=0).to(tl.int32)
    hi = tl.load(rows + OFF + 1, mask=valid, other=0).to(tl.int32)
    return (((hi & 0x7F) << 24) | (lo << 16)).to(tl.float32, bitcast=True), (hi >> 7).to(tl.float32)


@triton.jit
def decode_record(rows, valid, table, NA: tl.constexpr, BA: tl.constexpr, NB: tl.constexpr, BB: tl.constexpr,
                  NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr):
    """Level tiles (a, b, c), per-token scales (sa, sb, sc) and centroid flags (0.0/1.0) of the records at `rows`;
    0.0 for absent parts. Invalid rows read nothing and get zero scales, so garbage slots contribute nothing.
    """
    a = _part(rows, valid, table, 0, NA, BA, BA)
    if TURBO:
        b = _part(rows, valid, table, NA * BA // 8, NB, BB, BB)
        c = _part(rows, valid, table, (NA * BA + NB * BB) // 8, NC, 1, 0)
        rho, flag = _scale(rows, valid, REC - 4)
        theta = tl.load(rows + (REC - 2), mask=valid, other=0).to(tl.int32)
        beta = tl.load(rows + (REC - 1), mask=valid, other=0).to(tl.int32)
        sa = rho * tl.load(table + _COS + theta)
        sb = rho * tl.load(table + _SIN + theta)
        sc = rho * tl.load(table + _BETA + beta)
    else:
        b = 0.0
        c = 0.0
        sa, flag = _scale(rows, valid, REC - 2)
        sb = 0.0
        sc = 0.0
    return a, b, c, sa, sb, sc, flag


@triton.jit
def load_parts(ptr, row, mask, NA: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr):
    """Feature rows [A | B | C] of a (rows, NA+NB+NC) tensor as three tiles; 0.0 for absent parts."""
    F: tl.constexpr = NA + NB + NC
    base = ptr + row[:, None].to(tl.int64) * F
    a = tl.load(base + tl.arange(0, NA)[None, :], mask=mask[:, None], other=0.0)
    b = 0.0
    c = 0.0
    if NB > 0:
        b = tl.load(base + NA + tl.arange(0, NB)[None, :], mask=mask[:, None], other=0.0)
    if NC > 0:
        c = tl.load(base + NA + NB + tl.arange(0, NC)[None, :], mask=mask[:, None], other=0.0)
    return a, b, c


@triton.jit
def store_parts(ptr, row, mask, a, b, c, NA: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr):
    """Store tiles a, b, c as the feature rows [A | B | C] of a float32 (rows, NA+NB+NC) tensor."""
    F: tl.constexpr = NA + NB + NC
    base = ptr + row[:, None].to(tl.int64) * F
    tl.store(base + tl.arange(0, NA)[None, :], a, mask=mask[:, None])
    if NB > 0:
        tl.store(base + NA + tl.arange(0, NB)[None, :], b, mask=mask[:, None])
    if NC > 0:
        tl.store(base + NA + NB + tl.arange(0, NC)[None, :], c, mask=mask[:, None])


@triton.jit
def split_range(n_tiles, split, num_splits):
    """Tiles [lo, hi) of split `split` when num_splits splits share n_tiles."""
    per_split = tl.cdiv(n_tiles, num_splits)
    lo = split * per_split
    return lo, tl.minimum(lo + per_split, n_tiles)


@triton.jit
def softmax_state(BLOCK_M: tl.constexpr, VNA: tl.constexpr, VNB: tl.constexpr, VNC: tl.constexpr):
    """Initial online-softmax state: row max, row sum and the value-feature accumulators (a, b, c)."""
    return (tl.full([BLOCK_M], float("-inf"), tl.float32), tl.zeros([BLOCK_M], tl.float32),
            tl.zeros([BLOCK_M, VNA], tl.float32), tl.zeros([BLOCK_M, VNB if VNB > 0 else 1], tl.float32),
            tl.zeros([BLOCK_M, VNC if VNC > 0 else 1], tl.float32))


@triton.jit
def store_state(out_ptr, m_ptr, l_ptr, q_row, row_valid, split, num_rows, m_i, l_i, acc_a, acc_b, acc_c,
                VNA: tl.constexpr, VNB: tl.constexpr, VNC: tl.constexpr, SINGLE: tl.constexpr):
    """SINGLE: the normalized features of rows q_row; else split's partials; and the max/sum of each (for the merge
    and for attention sinks)."""
    part_row = split * num_rows + q_row
    if SINGLE:
        inv = 1.0 / l_i[:, None]
        store_parts(out_ptr, q_row, row_valid, acc_a * inv, acc_b * inv, acc_c * inv, VNA, VNB, VNC)
    else:
        store_parts(out_ptr, part_row, row_valid, acc_a, acc_b, acc_c, VNA, VNB, VNC)
    tl.store(m_ptr + part_row, m_i, mask=row_valid)
    tl.store(l_ptr + part_row, l_i, mask=row_valid)
