"""Decode attention (one query token per sequence) over packed KV caches: paged_attention's fast path.

Same feature-space math as triton_attention.py, laid out for throughput. One program = one sequence x one
KV head (the GQA group's query heads as the rows of a 16-row tile) x one split of the context. Per step of
BLOCK_N slots it loads each bit plane as 16-bit words (8-bit for 1-bit planes; records are 2-byte aligned),
splits the words into codes in registers (`tl.join` + `reshape`: no layout conversion, nothing byte-wide
through shared memory), picks codebook levels by bit-select trees on register scalars (4-bit: one L1
gather), and does both products as `tl.dot` on float16 operands (float32 in the CPU interpreter).
float16 range is kept by scaling: each query row (and a fresh token's key/value row) is divided by its largest
|feature| in the kernel (undone on its scores), and each tile's value weights `p * scale` by the tile's
largest record scale (undone on the dot).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import KVCacheLayout
from .triton_common import (COS_AT, LEVELS_ROW, RecordSpec, load_parts, softmax_state, split_range,
                             store_state)

_COS, _SIN, _BETA = tl.constexpr(COS_AT), tl.constexpr(COS_AT + 256), tl.constexpr(COS_AT + 512)
_ROW = tl.constexpr(LEVELS_ROW)
BLOCK_N = 64  # slots per step (benchmarks/attention.py --tile overrides it and NUM_WARPS)
NUM_WARPS = 8
NEW_ROWS = 16  # tile of the fresh token (row 0 live): tl.dot needs 16
HALF_DOTS: bool | None = None  # float16 dot operands; None: on CUDA only (tests force it in the interpreter)


@triton.jit
def _halve(x, S: tl.constexpr):
    """(R, n) words of 2S bits -> (R, 2n) halves of S bits, low half first (so codes stay in record order)."""
    return tl.reshape(tl.join(x & ((1 << S) - 1), x >> S), (x.shape[0], 2 * x.shape[1]))


@triton.jit
def _plane(rows, valid, OFF: tl.constexpr, N: tl.constexpr, W: tl.constexpr):
    """Raw words of the W-bit plane of N codes at byte OFF: (BLOCK_N, N*W/16) int16 (W = 1: (BLOCK_N, N/8) uint8)."""
    if W == 1:
        x = tl.load(rows[:, None] + (OFF + tl.arange(0, N // 8))[None, :], mask=valid[:, None], other=0)
    else:  # 16-bit words from two byte loads: int16 pointer loads faulted on the H100 (misaligned address, d=128)
        at = rows[:, None] + (OFF + 2 * tl.arange(0, N * W // 16))[None, :]
        lo = tl.load(at, mask=valid[:, None], other=0).to(tl.int16) & 0xFF
        hi = tl.load(at + 1, mask=valid[:, None], other=0).to(tl.int16)
        x = lo | (hi << 8)
    return x


@triton.jit
def _codes(x, W: tl.constexpr):
    """(BLOCK_N, N) int32 codes of a plane's raw words (see _plane), split in registers."""
    if W == 1:
        x = x.to(tl.int32)
    else:
        x = _halve(x.to(tl.int32) & 0xFFFF, 8)
    x = _halve(x, 4)
    if W < 4:
        x = _halve(x, 2)
    if W < 2:
        x = _halve(x, 1)
    return x


@triton.jit
def _pick2(c, lv, DT: tl.constexpr):
    """Levels lv[0..3] (scalars loaded from `lv`) at 2-bit codes c, by a select tree."""
    b0 = (c & 1) != 0
    lo = tl.where(b0, tl.load(lv + 1).to(DT), tl.load(lv).to(DT))
    hi = tl.where(b0, tl.load(lv + 3).to(DT), tl.load(lv + 2).to(DT))
    return tl.where((c & 2) != 0, hi, lo)


@triton.jit
def _fetch_part(rows, valid, OFF: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr):
    """Raw planes (low, high) of N BITS-bit codes at byte OFF; high is a dummy unless BITS == 3 (2-bit + 1-bit)."""
    if BITS == 3:
        low, high = _plane(rows, valid, OFF, N, 2), _plane(rows, valid, OFF + N // 4, N, 1)
    else:
        low, high = _plane(rows, valid, OFF, N, BITS), tl.zeros([1], tl.int8)
    return low, high


@triton.jit
def _levels(low, high, table, BITS: tl.constexpr, ROW: tl.constexpr, DT: tl.constexpr):
    """(BLOCK_N, N) codebook levels (table row ROW), in DT, of the codes in planes (low, high) (see _fetch_part)."""
    lv = table + ROW * _ROW
    if BITS == 1:
        out = tl.where(_codes(low, 1) != 0, tl.load(lv + 1).to(DT), tl.load(lv).to(DT))
    elif BITS == 2:
        out = _pick2(_codes(low, 2), lv, DT)
    elif BITS == 3:
        c = _codes(low, 2)
        out = tl.where(_codes(high, 1) != 0, _pick2(c, lv + 4, DT), _pick2(c, lv, DT))
    else:
        out = tl.load(lv + _codes(low, 4)).to(DT)
    return out


@triton.jit
def _fetch(rows, valid, NA: tl.constexpr, BA: tl.constexpr, NB: tl.constexpr, BB: tl.constexpr,
           NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr):
    """Raw words of the records at `rows` (nothing decoded yet, so the next tile's loads overlap this one's math):
    planes (a0, a1, b0, b1, c) and the int16 scale words (s0, s1); dummies for absent parts, 0 for invalid rows."""
    a0, a1 = _fetch_part(rows, valid, 0, NA, BA)
    s0 = tl.load((rows + (REC - 2)).to(tl.pointer_type(tl.int16)), mask=valid, other=0)
    if TURBO:
        b0, b1 = _fetch_part(rows, valid, NA * BA // 8, NB, BB)
        c = _plane(rows, valid, (NA * BA + NB * BB) // 8, NC, 1)
        s1 = tl.load((rows + (REC - 4)).to(tl.pointer_type(tl.int16)), mask=valid, other=0)
    else:
        # tensors, not constants, so that loops can carry them
        b0, b1, c, s1 = tl.zeros([1], tl.int8), tl.zeros([1], tl.int8), tl.zeros([1], tl.int8), tl.zeros([1], tl.int8)
    return a0, a1, b0, b1, c, s0, s1


@triton.jit
def _record(a0, a1, b0, b1, c, s0, s1, table, BA: tl.constexpr, BB: tl.constexpr, TURBO: tl.constexpr,
            DT: tl.constexpr):
    """Level tiles (a, b, c), per-slot scales (sa, sb, sc) and the record's scale (rho or alpha) from _fetch's words.

    Invalid rows have zero words, hence zero scales, so garbage slots contribute nothing.
    """
    a = _levels(a0, a1, table, BA, BA, DT)
    if TURBO:
        b = _levels(b0, b1, table, BB, BB, DT)
        c = _levels(c, 0, table, 1, 0, DT)
        rho = (s1.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        codes = s0.to(tl.int32)
        sa = rho * tl.load(table + _COS + (codes & 0xFF))
        sb = rho * tl.load(table + _SIN + (codes & 0xFF))
        sc = rho * tl.load(table + _BETA + ((codes >> 8) & 0xFF))
    else:
        b = 0.0
        c = 0.0
        rho = (s0.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        sa = rho
        sb = 0.0
        sc = 0.0
    return a, b, c, sa, sb, sc, rho


@triton.jit
def _dot(a, b, DT: tl.constexpr):
    """a @ b, float32 accumulation; exact float32 products when DT is float32 (the interpreter's case)."""
    if DT == tl.float32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _attend(qa, qb, qc, q_scale, ka, kb, kc, ksa, ksb, ksc, va, vb, vc, vsa, vsb, vsc, v_ref, live,
            m_i, l_i, acc_a, acc_b, acc_c, KNB: tl.constexpr, KNC: tl.constexpr, VNB: tl.constexpr,
            VNC: tl.constexpr, DT: tl.constexpr):
    """One online-softmax step (base 2) over a tile: scores from the key levels, accumulate value levels.

    Value weights p * scale are divided by `v_ref` (the tile's largest scale) for float16 and the dot
    multiplied back, so neither tiny nor huge record scales leave float16's range.
    """
    s = _dot(qa, tl.trans(ka), DT) * ksa[None, :]
    if KNB > 0:
        s += _dot(qb, tl.trans(kb), DT) * ksb[None, :]
    if KNC > 0:
        s += _dot(qc, tl.trans(kc), DT) * ksc[None, :]
    s = tl.where(live[None, :], s * q_scale[:, None], float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    inv = 1.0 / v_ref
    acc_a = acc_a * alpha[:, None] + _dot((p * (vsa * inv)[None, :]).to(DT), va, DT) * v_ref
    if VNB > 0:
        acc_b = acc_b * alpha[:, None] + _dot((p * (vsb * inv)[None, :]).to(DT), vb, DT) * v_ref
    if VNC > 0:
        acc_c = acc_c * alpha[:, None] + _dot((p * (vsc * inv)[None, :]).to(DT), vc, DT) * v_ref
    return m_new, l_i, acc_a, acc_b, acc_c


@triton.jit
def _positive_max(x):
    """max(x) where positive, else 1.0 (NaN stays NaN)."""
    top = tl.max(x, 0)
    return tl.where(top > 0, top, tl.where(top == top, 1.0, top))


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
def _slots(bt_row, page_base, t, t_hi, cached, HKV: tl.constexpr, BLOCK_N: tl.constexpr, BS: tl.constexpr,
           SLOT: tl.constexpr):
    """Record pointers and validity of the BLOCK_N slots of tile t (none valid from tile t_hi on)."""
    j = t * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = (j < cached) & (j < t_hi * BLOCK_N)
    page = tl.load(bt_row + j // BS, mask=valid, other=0).to(tl.int64)
    return page_base + (page * HKV * BS + j % BS) * SLOT, valid


@triton.jit
def decode_kernel(
    q_ptr, cache_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, nk_ptr, nv_ptr, table,
    out_ptr, m_ptr, l_ptr, bt_stride, num_rows, num_splits,
    HQ: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BS: tl.constexpr, SLOT: tl.constexpr,
    KNA: tl.constexpr, KBA: tl.constexpr, KNB: tl.constexpr, KBB: tl.constexpr, KNC: tl.constexpr,
    KTURBO: tl.constexpr, KREC: tl.constexpr,
    VNA: tl.constexpr, VBA: tl.constexpr, VNB: tl.constexpr, VBB: tl.constexpr, VNC: tl.constexpr,
    VTURBO: tl.constexpr, VREC: tl.constexpr,
    SINGLE: tl.constexpr, HAS_NEW: tl.constexpr, NEW_N: tl.constexpr, DT: tl.constexpr,
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

    cached = seq_len - 1 if HAS_NEW else seq_len
    n_tiles = tl.cdiv(cached, BLOCK_N)
    t_lo, t_hi = split_range(n_tiles, split, num_splits)
    m_i, l_i, acc_a, acc_b, acc_c = softmax_state(BLOCK_M, VNA, VNB, VNC)
    page_base = cache_ptr + h * BS * SLOT
    rows, valid = _slots(bt_ptr + b * bt_stride, page_base, t_lo, t_hi, cached, HKV, BLOCK_N, BS, SLOT)
    # raw words as plain loop-carried tensors (no tuples: older Tritons carry only tensors through loops)
    k0, k1, k2, k3, k4, k5, k6 = _fetch(rows, valid, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC)
    v0, v1, v2, v3, v4, v5, v6 = _fetch(rows + KREC, valid, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC)
    for t in range(t_lo, t_hi):
        live = valid
        ka0, ka1, kb0, kb1, kc0, ks0, ks1 = k0, k1, k2, k3, k4, k5, k6
        va0, va1, vb0, vb1, vc0, vs0, vs1 = v0, v1, v2, v3, v4, v5, v6
        # issue the next tile's loads before this tile's math
        rows, valid = _slots(bt_ptr + b * bt_stride, page_base, t + 1, t_hi, cached, HKV, BLOCK_N, BS, SLOT)
        k0, k1, k2, k3, k4, k5, k6 = _fetch(rows, valid, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC)
        v0, v1, v2, v3, v4, v5, v6 = _fetch(rows + KREC, valid, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC)
        ka, kb, kc, ksa, ksb, ksc, _ = _record(ka0, ka1, kb0, kb1, kc0, ks0, ks1, table, KBA, KBB, KTURBO, DT)
        va, vb, vc, vsa, vsb, vsc, vrho = _record(va0, va1, vb0, vb1, vc0, vs0, vs1, table, VBA, VBB, VTURBO, DT)
        v_ref = _positive_max(vrho * 4.0 if VTURBO else vrho)  # TurboQuant: cos, sin <= 1, beta <= 4 rho
        m_i, l_i, acc_a, acc_b, acc_c = _attend(qa, qb, qc, q_scale, ka, kb, kc, ksa, ksb, ksc, va, vb, vc,
                                                vsa, vsb, vsc, v_ref, live, m_i, l_i, acc_a, acc_b, acc_c,
                                                KNB, KNC, VNB, VNC, DT)
    if HAS_NEW:
        # the fresh token (position seq_len - 1), in the last split
        jn = tl.arange(0, NEW_N)
        live = jn < (split == num_splits - 1).to(tl.int32)
        row = (tok + jn) * HKV + h
        ka, kb, kc, ks = _scaled_rows(nk_ptr, row, live, KNA, KNB, KNC, DT)
        va, vb, vc, vs = _scaled_rows(nv_ptr, row, live, VNA, VNB, VNC, DT)
        m_i, l_i, acc_a, acc_b, acc_c = _attend(qa, qb, qc, q_scale, ka, kb, kc, ks, ks, ks, va, vb, vc,
                                                vs, vs, vs, _positive_max(vs), live, m_i, l_i, acc_a, acc_b,
                                                acc_c, KNB, KNC, VNB, VNC, DT)
    store_state(out_ptr, m_ptr, l_ptr, q_row, row_valid, split, num_rows, m_i, l_i, acc_a, acc_b, acc_c,
                VNA, VNB, VNC, SINGLE)


def dot_dtype(device: torch.device) -> torch.dtype:
    """The dot-operand dtype: float16 on CUDA, float32 elsewhere, unless HALF_DOTS says otherwise."""
    return torch.float16 if (device.type == "cuda" if HALF_DOTS is None else HALF_DOTS) else torch.float32


def launch(qf: torch.Tensor, cache: torch.Tensor, layout: KVCacheLayout, kspec: RecordSpec, vspec: RecordSpec,
           block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
           new: tuple[torch.Tensor, torch.Tensor] | None, table: torch.Tensor, target: torch.Tensor,
           m: torch.Tensor, lse: torch.Tensor, splits: int) -> None:
    """Run decode_kernel: qf (T, Hkv, G, F) float32 query features; new = fresh key/value features (T, Hkv, F).

    Writes normalized features to `target` when splits == 1, else partials and their max/sum to target, m, lse.
    """
    tq, hkv, group, _ = qf.shape
    nk, nv = new or (qf, qf)  # placeholders: never read unless HAS_NEW
    decode_kernel[(seq_lens.shape[0], hkv, splits)](
        qf, cache, block_table, seq_lens, query_start_loc, nk, nv, table, target, m, lse,
        block_table.stride(0), tq * hkv * group, splits,
        **constexprs(layout, kspec, vspec, group, dot_dtype(qf.device), splits == 1, new is not None),
        num_warps=NUM_WARPS, num_stages=1,
    )


def constexprs(layout: KVCacheLayout, kspec: RecordSpec, vspec: RecordSpec, group: int, dtype: torch.dtype,
               single: bool, has_new: bool) -> dict:
    """decode_kernel's compile-time arguments (also used by benchmarks/attention_registers.py)."""
    return dict(HQ=layout.num_kv_heads * group, HKV=layout.num_kv_heads, G=group,
                BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=BLOCK_N, BS=layout.block_size,
                SLOT=layout.slot_bytes, **kspec.constexprs("K"), **vspec.constexprs("V"), SINGLE=single,
                HAS_NEW=has_new, NEW_N=NEW_ROWS, DT=tl.float16 if dtype == torch.float16 else tl.float32)
