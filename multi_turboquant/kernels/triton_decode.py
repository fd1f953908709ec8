"""Decode attention (one query token per sequence) over packed KV caches: paged_attention's fast path.

Same feature-space math as triton_attention.py, laid out for throughput. One program = one sequence x one
KV head (the GQA group's query heads as the rows of a 16-row tile) x one split of the context. Per step of
BLOCK_N slots it loads each record part as raw words per group of 16 codes (32-bit words from two int16 loads,
16-bit units from two byte loads: records are only 2-byte aligned), turns them into codebook levels with the
PTX programs of unpack_asm.py (a reference path of per-code table loads in Triton's interpreter), and does both
products as `tl.dot`: keys in float16 (each query row, and a fresh token's key/value row, divided by its largest
|feature|, undone on its scores; record scales applied to the scores in float32), values in bfloat16 (the weights
p * record scale keep float32's range); float32 in the interpreter.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..formats.params import OFFSET_BUCKET
from .layout import KVCacheLayout
from .unpack_asm import program, to_ptx
from .triton_common import (COS_AT, LEVELS_ROW, NO_WINDOW, RecordSpec, load_parts, softmax_state,
                             split_range, store_state)

_COS, _SIN, _BETA = tl.constexpr(COS_AT), tl.constexpr(COS_AT + 256), tl.constexpr(COS_AT + 512)
_ROW = tl.constexpr(LEVELS_ROW)
TILE: tuple[int, int] | None = None  # (slots per step, warps) for every format; None: tile()'s per-format choice
MAX_REGISTERS: int | None = None  # per-thread register cap (ptxas), for occupancy experiments
NEW_ROWS = 16  # tile of the fresh token (row 0 live): tl.dot needs 16
HALF_DOTS: bool | None = None  # float16 dot operands; None: on CUDA only (tests force it in the interpreter)
_BITS_ROWS = ((1, 0), (1, 1), (2, 2), (3, 3), (4, 4))
_H1Q, _H1, _H2, _H3, _H4 = (tl.constexpr(to_ptx(program(b, r, torch.float16))) for b, r in _BITS_ROWS)
_B1Q, _B1, _B2, _B3, _B4 = (tl.constexpr(to_ptx(program(b, r, torch.bfloat16))) for b, r in _BITS_ROWS)
_CONSTRAINTS = tl.constexpr(",".join(["=h"] * 16 + ["r"] * 2))


@triton.jit
def _u16(rows, OFF: tl.constexpr, STRIDE: tl.constexpr, NG: tl.constexpr):
    """(BLOCK_N, NG) int32: the 16-bit unit at byte OFF + STRIDE * g of each record, g < NG (two byte loads:
    records are only 2-byte aligned, and int16 pointer loads faulted on the H100 with misaligned addresses)."""
    at = rows[:, None] + (OFF + STRIDE * tl.arange(0, NG))[None, :]
    return tl.load(at).to(tl.int32) | (tl.load(at + 1).to(tl.int32) << 8)


@triton.jit
def _word(rows, OFF: tl.constexpr, STRIDE: tl.constexpr, NG: tl.constexpr):
    """(BLOCK_N, NG) int32: the little-endian 32-bit word at byte OFF + STRIDE * g (STRIDE >= 4) of each record,
    as two int16 loads: 2-byte aligned, and never vectorized (no two of them are adjacent)."""
    at = (rows[:, None] + (OFF + STRIDE * tl.arange(0, NG))[None, :]).to(tl.pointer_type(tl.int16))
    return (tl.load(at).to(tl.int32) & 0xFFFF) | (tl.load(at + 1).to(tl.int32) << 16)


@triton.jit
def _fetch_part(rows, OFF: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr):
    """Raw words (x0, x1) of the N BITS-bit codes at byte OFF, per group of 16 codes (see unpack_asm):
    1 bit: the 16-bit unit; 2: the 32-bit word; 3: the 2-bit plane's word and the 1-bit plane's unit;
    4: two words. x1 repeats x0 where unused. Unmasked: every row points into the cache (see _slots)."""
    NG: tl.constexpr = N // 16
    if BITS == 1:
        x0 = _u16(rows, OFF, 2, NG)
        x1 = x0
    elif BITS == 2:
        x0 = _word(rows, OFF, 4, NG)
        x1 = x0
    elif BITS == 3:
        x0 = _word(rows, OFF, 4, NG)
        x1 = _u16(rows, OFF + N // 4, 2, NG)
    else:
        x0 = _word(rows, OFF, 8, NG)
        x1 = _word(rows, OFF + 4, 8, NG)
    return x0, x1


@triton.jit
def _pair(a, b):
    """(R, n), (R, n) -> (R, 2n) interleaved: a's elements at even, b's at odd positions (no data movement)."""
    return tl.reshape(tl.join(a, b), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _stack4(a0, a1, a2, a3):
    return _pair(_pair(a0, a2), _pair(a1, a3))


@triton.jit
def _stack16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    """16 tiles (R, n) -> (R, 16n) with tile j at positions 16g + j: a group's codes back in record order."""
    return _pair(_pair(_stack4(a0, a4, a8, a12), _stack4(a2, a6, a10, a14)),
                 _pair(_stack4(a1, a5, a9, a13), _stack4(a3, a7, a11, a15)))


@triton.jit
def _code(x0, x1, J: tl.constexpr, BITS: tl.constexpr):
    """Code J of each group in the raw words (reference path, used where PTX cannot run)."""
    if BITS == 1:
        c = (x0 >> J) & 1
    elif BITS == 2:
        c = (x0 >> (2 * J)) & 3
    elif BITS == 3:
        c = ((x0 >> (2 * J)) & 3) | (((x1 >> J) & 1) << 2)
    elif J < 8:
        c = (x0 >> (4 * J)) & 15
    else:
        c = (x1 >> (4 * (J - 8))) & 15
    return c


@triton.jit
def _lv(x0, x1, lv, J: tl.constexpr, BITS: tl.constexpr):
    return tl.load(lv + _code(x0, x1, J, BITS))


@triton.jit
def _asm16(PTX: tl.constexpr, x0, x1):
    """Run one unpack_asm program per group: inputs $16 = x0, $17 = x1; 16 tiles of 16-bit float patterns."""
    return tl.inline_asm_elementwise(PTX, _CONSTRAINTS, [x0, x1],
                                     dtype=(tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16,
                                            tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16, tl.int16),
                                     is_pure=True, pack=1)


@triton.jit
def _asm_levels(x0, x1, BITS: tl.constexpr, ROW: tl.constexpr, BF16: tl.constexpr):
    """The 16 level tiles (bit patterns of float16, or bfloat16 if BF16) of each group, codebook row ROW."""
    if BITS == 1:
        if ROW == 0:
            o = _asm16(_B1Q, x0, x1) if BF16 else _asm16(_H1Q, x0, x1)
        else:
            o = _asm16(_B1, x0, x1) if BF16 else _asm16(_H1, x0, x1)
    elif BITS == 2:
        o = _asm16(_B2, x0, x1) if BF16 else _asm16(_H2, x0, x1)
    elif BITS == 3:
        o = _asm16(_B3, x0, x1) if BF16 else _asm16(_H3, x0, x1)
    else:
        o = _asm16(_B4, x0, x1) if BF16 else _asm16(_H4, x0, x1)
    return o


@triton.jit
def _levels(x0, x1, table, BITS: tl.constexpr, ROW: tl.constexpr, DT: tl.constexpr, ASM: tl.constexpr):
    """(BLOCK_N, N) codebook levels (table row ROW), in DT, of the codes in the raw words (see _fetch_part)."""
    if ASM:
        o = _asm_levels(x0, x1, BITS, ROW, DT == tl.bfloat16)
        out = _stack16(o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11], o[12], o[13],
                       o[14], o[15]).to(DT, bitcast=True)
    else:
        lv = table + ROW * _ROW
        out = _stack16(_lv(x0, x1, lv, 0, BITS), _lv(x0, x1, lv, 1, BITS), _lv(x0, x1, lv, 2, BITS),
                       _lv(x0, x1, lv, 3, BITS), _lv(x0, x1, lv, 4, BITS), _lv(x0, x1, lv, 5, BITS),
                       _lv(x0, x1, lv, 6, BITS), _lv(x0, x1, lv, 7, BITS), _lv(x0, x1, lv, 8, BITS),
                       _lv(x0, x1, lv, 9, BITS), _lv(x0, x1, lv, 10, BITS), _lv(x0, x1, lv, 11, BITS),
                       _lv(x0, x1, lv, 12, BITS), _lv(x0, x1, lv, 13, BITS), _lv(x0, x1, lv, 14, BITS),
                       _lv(x0, x1, lv, 15, BITS)).to(DT)
    return out


@triton.jit
def _fetch(rows, valid, NA: tl.constexpr, BA: tl.constexpr, NB: tl.constexpr, BB: tl.constexpr,
           NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr):
    """Raw words of the records at `rows` (nothing decoded yet, so the next tile's loads overlap this one's math):
    parts (a0, a1), (b0, b1), c (see _fetch_part) and the int16 scale words (s0, s1); dummies for absent parts.
    Invalid rows read block 0's codes but get zero scale words, so they contribute nothing."""
    a0, a1 = _fetch_part(rows, 0, NA, BA)
    s0 = tl.load((rows + (REC - 2)).to(tl.pointer_type(tl.int16)), mask=valid, other=0)
    if TURBO:
        b0, b1 = _fetch_part(rows, NA * BA // 8, NB, BB)
        c, _ = _fetch_part(rows, (NA * BA + NB * BB) // 8, NC, 1)
        s1 = tl.load((rows + (REC - 4)).to(tl.pointer_type(tl.int16)), mask=valid, other=0)
    else:
        # tensors, not constants, so that loops can carry them
        b0, b1, c, s1 = tl.zeros([1], tl.int32), tl.zeros([1], tl.int32), tl.zeros([1], tl.int32), tl.zeros([1], tl.int8)
    return a0, a1, b0, b1, c, s0, s1


@triton.jit
def _record(a0, a1, b0, b1, c, s0, s1, table, BA: tl.constexpr, BB: tl.constexpr, TURBO: tl.constexpr,
            DT: tl.constexpr, ASM: tl.constexpr):
    """Level tiles (a, b, c) in DT, per-slot scales (sa, sb, sc) and centroid flags (0.0/1.0: the scale word's sign
    bit) from _fetch's words. Invalid rows have zero scale words, hence zero scales: they contribute nothing.
    """
    a = _levels(a0, a1, table, BA, BA, DT, ASM)
    if TURBO:
        b = _levels(b0, b1, table, BB, BB, DT, ASM)
        c = _levels(c, c, table, 1, 0, DT, ASM)
        rho, flag = _scale_word(s1)
        codes = s0.to(tl.int32)
        sa = rho * tl.load(table + _COS + (codes & 0xFF))
        sb = rho * tl.load(table + _SIN + (codes & 0xFF))
        sc = rho * tl.load(table + _BETA + ((codes >> 8) & 0xFF))
    else:
        b = 0.0
        c = 0.0
        sa, flag = _scale_word(s0)
        sb = 0.0
        sc = 0.0
    return a, b, c, sa, sb, sc, flag


@triton.jit
def _scale_word(w):
    """An int16 bfloat16 scale word -> (its value with the sign bit cleared, the sign bit as 0.0/1.0)."""
    w = w.to(tl.int32)
    return ((w & 0x7FFF) << 16).to(tl.float32, bitcast=True), (w < 0).to(tl.float32)


@triton.jit
def _dot(a, b, DT: tl.constexpr):
    """a @ b, float32 accumulation; exact float32 products when DT is float32 (the interpreter's case)."""
    if DT == tl.float32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _attend(qa, qb, qc, q_scale, qd, qo, ka, kb, kc, ksa, ksb, ksc, kf, va, vb, vc, vsa, vsb, vsc, live,
            m_i, l_i, acc_a, acc_b, acc_c, KNB: tl.constexpr, KNC: tl.constexpr, VNB: tl.constexpr,
            VNC: tl.constexpr, DT: tl.constexpr, DTV: tl.constexpr, KCEN: tl.constexpr, KPOS: tl.constexpr):
    """One online-softmax step (base 2) over a tile: scores from the key levels (DT dots, record scales applied
    to the scores; with KPOS, plus the row's query . (tile's offset - first offset) qo; with KCEN, plus
    qd - qo, qd = query . (centroid - first offset), where the key's flag kf is set),
    accumulate value levels (DTV dots: the value weights p * record scale are bfloat16 on CUDA, whose range is
    float32's, so no record scale can overflow them)."""
    s = _dot(qa, tl.trans(ka), DT) * ksa[None, :]
    if KNB > 0:
        s += _dot(qb, tl.trans(kb), DT) * ksb[None, :]
    if KNC > 0:
        s += _dot(qc, tl.trans(kc), DT) * ksc[None, :]
    s = s * q_scale[:, None]
    if KPOS:
        s += qo[:, None]
    if KCEN:
        s += (qd - qo)[:, None] * kf[None, :]
    s = tl.where(live[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc_a = acc_a * alpha[:, None] + _dot((p * vsa[None, :]).to(DTV), va, DTV)
    if VNB > 0:
        acc_b = acc_b * alpha[:, None] + _dot((p * vsb[None, :]).to(DTV), vb, DTV)
    if VNC > 0:
        acc_c = acc_c * alpha[:, None] + _dot((p * vsc[None, :]).to(DTV), vc, DTV)
    return m_new, l_i, acc_a, acc_b, acc_c


@triton.jit
def _bucket_term(qo_ptr, q_row, row_valid, position, num_buckets, BUCKET: tl.constexpr):
    """(BLOCK_M,) query . (offset of `position`'s bucket - first offset), from the per-row table qo (rows, buckets)."""
    bucket = tl.minimum(position // BUCKET, num_buckets - 1)
    return tl.load(qo_ptr + q_row.to(tl.int64) * num_buckets + bucket, mask=row_valid, other=0.0)


@triton.jit
def _scaled_rows(ptr, row, mask, NA: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr, DT: tl.constexpr):
    """float32 feature rows (see load_parts) as DT tiles divided by each row's max |feature| (when positive),
    and that max (0 for zero or masked rows): float16 keeps its precision for features of any magnitude."""
    a, b, c = load_parts(ptr, row, mask, NA, NB, NC)
    top = tl.max(tl.abs(a), 1)
    if NB > 0:
        top = tl.maximum(top, tl.max(tl.abs(b), 1))
    if NC > 0:
        top = tl.maximum(top, tl.max(tl.abs(c), 1))
    inv = 1.0 / tl.where(top > 0, top, 1.0)[:, None]
    a = (a * inv).to(DT)
    if NB > 0:
        b = (b * inv).to(DT)
    if NC > 0:
        c = (c * inv).to(DT)
    return a, b, c, top


@triton.jit
def _slots(bt_row, page_base, t, t_hi, start, cached, HKV: tl.constexpr, BLOCK_N: tl.constexpr,
           BS: tl.constexpr, SLOT: tl.constexpr):
    """Record pointers and validity of the BLOCK_N slots of tile t (valid: positions start..cached-1, none from
    tile t_hi on); an invalid slot points into block 0, so its record can be read unmasked."""
    j = t * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = (j < cached) & (j >= start) & (j < t_hi * BLOCK_N)
    page = tl.load(bt_row + j // BS, mask=valid, other=0).to(tl.int64)
    return page_base + (page * HKV * BS + j % BS) * SLOT, valid


@triton.jit(do_not_specialize=["bt_stride", "num_rows", "num_splits"])  # no recompiles as batches change
def decode_kernel(
    q_ptr, qd_ptr, qo_ptr, cache_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, nk_ptr, nv_ptr, table,
    out_ptr, m_ptr, l_ptr, bt_stride, num_rows, num_splits, num_buckets, window,
    HQ: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BS: tl.constexpr, SLOT: tl.constexpr,
    KNA: tl.constexpr, KBA: tl.constexpr, KNB: tl.constexpr, KBB: tl.constexpr, KNC: tl.constexpr,
    KTURBO: tl.constexpr, KREC: tl.constexpr,
    VNA: tl.constexpr, VBA: tl.constexpr, VNB: tl.constexpr, VBB: tl.constexpr, VNC: tl.constexpr,
    VTURBO: tl.constexpr, VREC: tl.constexpr,
    SINGLE: tl.constexpr, HAS_NEW: tl.constexpr, NEW_N: tl.constexpr, DT: tl.constexpr, DTV: tl.constexpr,
    ASM: tl.constexpr, KCEN: tl.constexpr, KPOS: tl.constexpr, BUCKET: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    tok = tl.load(qsl_ptr + b)
    if tl.load(qsl_ptr + b + 1) == tok:  # a sequence with no query token
        return
    seq_len = tl.load(seq_lens_ptr + b)
    r = tl.arange(0, BLOCK_M)
    row_valid = r < G
    q_row = tok * HQ + h * G + r
    qa, qb, qc, q_scale = _scaled_rows(q_ptr, q_row, row_valid, KNA, KNB, KNC, DT)
    if KCEN:
        qd = tl.load(qd_ptr + q_row, mask=row_valid, other=0.0)  # query . (key centroid - offset)
    else:
        qd = tl.zeros([BLOCK_M], tl.float32)
    qo = tl.zeros([BLOCK_M], tl.float32)

    cached = seq_len - 1 if HAS_NEW else seq_len
    start = tl.maximum(seq_len - window, 0)  # the window of the query at seq_len - 1 (earlier pages may be freed)
    t0 = start // BLOCK_N
    t_lo, t_hi = split_range(tl.cdiv(cached, BLOCK_N) - t0, split, num_splits)
    t_lo += t0
    t_hi += t0
    m_i, l_i, acc_a, acc_b, acc_c = softmax_state(BLOCK_M, VNA, VNB, VNC)
    page_base = cache_ptr + h * BS * SLOT
    rows, valid = _slots(bt_ptr + b * bt_stride, page_base, t_lo, t_hi, start, cached, HKV, BLOCK_N, BS, SLOT)
    # raw words as plain loop-carried tensors (no tuples: older Tritons carry only tensors through loops)
    k0, k1, k2, k3, k4, k5, k6 = _fetch(rows, valid, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC)
    v0, v1, v2, v3, v4, v5, v6 = _fetch(rows + KREC, valid, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC)
    for t in range(t_lo, t_hi):
        live = valid
        ka0, ka1, kb0, kb1, kc0, ks0, ks1 = k0, k1, k2, k3, k4, k5, k6
        va0, va1, vb0, vb1, vc0, vs0, vs1 = v0, v1, v2, v3, v4, v5, v6
        # issue the next tile's loads before this tile's math
        rows, valid = _slots(bt_ptr + b * bt_stride, page_base, t + 1, t_hi, start, cached, HKV, BLOCK_N,
                             BS, SLOT)
        k0, k1, k2, k3, k4, k5, k6 = _fetch(rows, valid, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC)
        v0, v1, v2, v3, v4, v5, v6 = _fetch(rows + KREC, valid, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC)
        ka, kb, kc, ksa, ksb, ksc, kf = _record(ka0, ka1, kb0, kb1, kc0, ks0, ks1, table, KBA, KBB, KTURBO, DT, ASM)
        va, vb, vc, vsa, vsb, vsc, _ = _record(va0, va1, vb0, vb1, vc0, vs0, vs1, table, VBA, VBB, VTURBO, DTV, ASM)
        if KPOS:  # a tile lies within one offset bucket (BUCKET is a multiple of BLOCK_N)
            qo = _bucket_term(qo_ptr, q_row, row_valid, t * BLOCK_N, num_buckets, BUCKET)
        m_i, l_i, acc_a, acc_b, acc_c = _attend(qa, qb, qc, q_scale, qd, qo, ka, kb, kc, ksa, ksb, ksc, kf, va, vb,
                                                vc, vsa, vsb, vsc, live, m_i, l_i, acc_a, acc_b, acc_c,
                                                KNB, KNC, VNB, VNC, DT, DTV, KCEN, KPOS)
    if HAS_NEW:
        # the fresh token (position seq_len - 1), in the last split
        jn = tl.arange(0, NEW_N)
        live = jn < (split == num_splits - 1).to(tl.int32)
        row = (tok + jn) * HKV + h
        ka, kb, kc, ks = _scaled_rows(nk_ptr, row, live, KNA, KNB, KNC, DT)
        va, vb, vc, vs = _scaled_rows(nv_ptr, row, live, VNA, VNB, VNC, DTV)
        if KPOS:
            qo = _bucket_term(qo_ptr, q_row, row_valid, seq_len - 1, num_buckets, BUCKET)
        m_i, l_i, acc_a, acc_b, acc_c = _attend(qa, qb, qc, q_scale, qd, qo, ka, kb, kc, ks, ks, ks, ks * 0.0, va,
                                                vb, vc, vs, vs, vs, live, m_i, l_i, acc_a, acc_b, acc_c,
                                                KNB, KNC, VNB, VNC, DT, DTV, KCEN, KPOS)
    store_state(out_ptr, m_ptr, l_ptr, q_row, row_valid, split, num_rows, m_i, l_i, acc_a, acc_b, acc_c,
                VNA, VNB, VNC, SINGLE)


def tile(kspec: RecordSpec, vspec: RecordSpec) -> tuple[int, int]:
    """(slots per step, warps): measured on the H100 at d = 128 (BENCHMARKS.md): 64 slots in 2 warps for
    IsoQuant/PlanarQuant, 64 in 4 for TurboQuant (its two feature halves and QJL part hold twice the features)."""
    return TILE or ((64, 4) if kspec.turbo or vspec.turbo else (64, 2))


def dot_dtype(device: torch.device) -> torch.dtype:
    """The key dot-operand dtype: float16 on CUDA, float32 elsewhere, unless HALF_DOTS says otherwise. Value dots
    are bfloat16 on CUDA and float32 in Triton's interpreter, whose bfloat16 dot is wrong (it is checked on the GPU
    by benchmarks/attention.py --check)."""
    return torch.float16 if (device.type == "cuda" if HALF_DOTS is None else HALF_DOTS) else torch.float32


def launch(qf: torch.Tensor, cache: torch.Tensor, layout: KVCacheLayout, kspec: RecordSpec, vspec: RecordSpec,
           block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
           new: tuple[torch.Tensor, torch.Tensor] | None, table: torch.Tensor, target: torch.Tensor,
           m: torch.Tensor, lse: torch.Tensor, splits: int, qd: torch.Tensor | None = None,
           qo: torch.Tensor | None = None, window: int = NO_WINDOW) -> None:
    """Run decode_kernel: qf (T, Hkv, G, F) float32 query features; new = fresh key/value features (T, Hkv, F);
    qd (T, Hkv, G) = query . (key centroid - key offset) when the keys have a centroid; qo (T, Hkv, G, buckets) =
    query . (bucket's key offset - first bucket's) when the key offset follows the position; window: the query
    (at seq_len - 1) sees positions seq_len - window .. seq_len - 1 only.

    Writes normalized features to `target` when splits == 1, else partials and their max/sum to target, m, lse.
    """
    tq, hkv, group, _ = qf.shape
    nk, nv = new or (qf, qf)  # placeholders: never read unless HAS_NEW
    decode_kernel[(seq_lens.shape[0], hkv, splits)](
        qf, qf if qd is None else qd, qf if qo is None else qo, cache, block_table, seq_lens, query_start_loc, nk, nv,
        table, target, m, lse, block_table.stride(0), tq * hkv * group, splits, 1 if qo is None else qo.shape[-1],
        window,
        **constexprs(layout, kspec, vspec, group, dot_dtype(qf.device), splits == 1, new is not None,
                     asm=qf.device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1",
                     centroid=qd is not None, position=qo is not None),
        num_warps=tile(kspec, vspec)[1], num_stages=1, **({"maxnreg": MAX_REGISTERS} if MAX_REGISTERS else {}),
    )


def constexprs(layout: KVCacheLayout, kspec: RecordSpec, vspec: RecordSpec, group: int, dtype: torch.dtype,
               single: bool, has_new: bool, asm: bool = True, centroid: bool = False, position: bool = False) -> dict:
    """decode_kernel's compile-time arguments (also used by benchmarks/attention_registers.py); asm: unpack
    codes with the PTX programs of unpack_asm (CUDA), else with the reference path (Triton's interpreter);
    centroid: the keys have a calibration centroid; position: their offset follows the position."""
    half = dtype == torch.float16
    block_n = tile(kspec, vspec)[0]
    if OFFSET_BUCKET % block_n:
        raise ValueError(f"decode tile of {block_n} slots does not divide the offset bucket {OFFSET_BUCKET}")
    return dict(HQ=layout.num_kv_heads * group, HKV=layout.num_kv_heads, G=group,
                BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BS=layout.block_size,
                SLOT=layout.slot_bytes, **kspec.constexprs("K"), **vspec.constexprs("V"), SINGLE=single,
                HAS_NEW=has_new, NEW_N=NEW_ROWS, DT=tl.float16 if half else tl.float32,
                DTV=tl.bfloat16 if half and asm else tl.float32, ASM=asm, KCEN=centroid,
                KPOS=position, BUCKET=OFFSET_BUCKET)
