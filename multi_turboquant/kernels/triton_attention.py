"""Fused Triton paged attention over packed KV caches: prefill and chunked prefill (with decodes) in one kernel;
pure decode batches go to triton_decode.py.

Scores and values are computed in each format's feature space (feature_space.py): the query is rotated
once, a key's score is a dot product of the rotated query with codebook levels times the record's
scales, and values are accumulated as features and mapped back once per output row. One program
handles one KV head for a tile of query tokens (all query heads of the GQA group) over one split of the
sequence; splits are merged by a small reduction kernel (flash-decoding). No host syncs when the
caller passes `max_query_len` and `max_seq_len` (CUDA-graph safe).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..formats.params import OFFSET_BUCKET, ChannelParams, offset_rows
from .feature_space import FeatureMaps, build_feature_maps, per_head_matmul
from .layout import KVCacheLayout
from .naive import check_cache, check_sinks, check_window, token_positions
from . import triton_decode
from .triton_common import check_head_dim
from .triton_common import (NO_WINDOW, RecordSpec, constants, decode_record, load_parts, record_spec,
                             softmax_state, split_range, store_state)

BLOCK_N = 32  # KV positions per inner step of the prefill kernel
NUM_WARPS = 4
PREFILL_ROWS = 32  # query rows (tokens x group heads) per prefill tile
MIN_SPLIT_TOKENS = 256  # a split covers at least this many positions
_MAP_BLOCK = 32  # feature columns per step of the query and output map kernels
LOG2E = 1.4426950408889634


@triton.jit
def _scores(qa, qb, qc, ka, kb, kc, sa, sb, sc, NB: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
    """(rows, BLOCK_N) scores: per part, query . levels, times the record's scale of that part."""
    s = tl.dot(qa, tl.trans(ka), input_precision=PREC) * sa[None, :]
    if NB > 0:
        s += tl.dot(qb, tl.trans(kb), input_precision=PREC) * sb[None, :]
    if NC > 0:
        s += tl.dot(qc, tl.trans(kc), input_precision=PREC) * sc[None, :]
    return s


@triton.jit
def _step(s, mask, m_i, l_i, acc_a, acc_b, acc_c, va, vb, vc, sa, sb, sc,
          NB: tl.constexpr, NC: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step (base 2) over a tile of scores and value features."""
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc_a = acc_a * alpha[:, None] + tl.dot(p * sa[None, :], va, input_precision=PREC)
    if NB > 0:
        acc_b = acc_b * alpha[:, None] + tl.dot(p * sb[None, :], vb, input_precision=PREC)
    if NC > 0:
        acc_c = acc_c * alpha[:, None] + tl.dot(p * sc[None, :], vc, input_precision=PREC)
    return m_new, l_i, acc_a, acc_b, acc_c


@triton.jit
def _find_sequence(qsl, tile, num_seqs, TOK: tl.constexpr):
    """The sequence b whose query tiles (numbered qsl[b] // TOK + b onwards) contain `tile`."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(qsl + mid) // TOK + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _bucket_terms(qo_ptr, q_row, row_valid, positions, num_buckets, BUCKET: tl.constexpr):
    """(rows, keys) query . (offset of each key position's bucket - first offset) from qo (query rows, buckets)."""
    bucket = tl.minimum(positions // BUCKET, num_buckets - 1)
    return tl.load(qo_ptr + q_row.to(tl.int64)[:, None] * num_buckets + bucket[None, :], mask=row_valid[:, None],
                   other=0.0)


@triton.jit(do_not_specialize=["bt_stride", "num_seqs", "num_rows", "num_splits", "num_buckets"])
def _attention_kernel(
    q_ptr, qd_ptr, qo_ptr, cache_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, nk_ptr, nv_ptr, table, out_ptr, m_ptr, l_ptr,
    bt_stride, num_seqs, num_rows, num_splits, num_buckets, window,
    HQ: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, TOK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BS: tl.constexpr, SLOT: tl.constexpr,
    KNA: tl.constexpr, KBA: tl.constexpr, KNB: tl.constexpr, KBB: tl.constexpr, KNC: tl.constexpr,
    KTURBO: tl.constexpr, KREC: tl.constexpr,
    VNA: tl.constexpr, VBA: tl.constexpr, VNB: tl.constexpr, VBB: tl.constexpr, VNC: tl.constexpr,
    VTURBO: tl.constexpr, VREC: tl.constexpr,
    SINGLE: tl.constexpr, HAS_NEW: tl.constexpr, PREC: tl.constexpr, KCEN: tl.constexpr, KPOS: tl.constexpr,
    BUCKET: tl.constexpr,
):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    b = _find_sequence(qsl_ptr, tile, num_seqs, TOK)
    q_start = tl.load(qsl_ptr + b)
    tok_start = q_start + (tile - q_start // TOK - b) * TOK
    q_end = tl.load(qsl_ptr + b + 1)
    if tok_start >= q_end:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    first_pos = seq_len - (q_end - q_start)  # position of the sequence's first query token

    r = tl.arange(0, BLOCK_M)
    tok = r // GP
    g = r % GP
    row_valid = (g < G) & (tok < TOK) & (tok_start + tok < q_end)
    q_pos = first_pos + (tok_start - q_start) + tok
    q_row = (tok_start + tok) * HQ + h * G + g
    qa, qb, qc = load_parts(q_ptr, q_row, row_valid, KNA, KNB, KNC)
    if KCEN:
        qd = tl.load(qd_ptr + q_row, mask=row_valid, other=0.0)  # query . (key centroid - offset)

    kv_limit = first_pos + (tl.minimum(tok_start + TOK, q_end) - q_start)  # causal end of this tile
    cached = first_pos if HAS_NEW else seq_len
    end = tl.minimum(cached, kv_limit)
    start = tl.maximum(first_pos + (tok_start - q_start) - window + 1, 0)  # the tile's first query's window start
    t0 = start // BLOCK_N  # earlier pages may be freed (vLLM's sliding-window layers): never read them
    t_lo, t_hi = split_range(tl.maximum(tl.cdiv(end, BLOCK_N) - t0, 0), split, num_splits)
    t_lo += t0
    t_hi += t0
    m_i, l_i, acc_a, acc_b, acc_c = softmax_state(BLOCK_M, VNA, VNB, VNC)
    page_base = cache_ptr + h * BS * SLOT
    for t in range(t_lo, t_hi):
        j = t * BLOCK_N + tl.arange(0, BLOCK_N)
        valid = (j < end) & (j >= start)
        page = tl.load(bt_ptr + b * bt_stride + j // BS, mask=valid, other=0).to(tl.int64)
        rows = page_base + (page * HKV * BS + j % BS) * SLOT
        ka, kb, kc, ksa, ksb, ksc, kf = decode_record(rows, valid, table, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC)
        s = _scores(qa, qb, qc, ka, kb, kc, ksa, ksb, ksc, KNB, KNC, PREC)
        qo = 0.0
        if KPOS:  # query . (key's offset - first offset); per key: a tile may cross a bucket edge
            qo = _bucket_terms(qo_ptr, q_row, row_valid, j, num_buckets, BUCKET)
            s += qo
        if KCEN:  # a flagged key's offset is the centroid instead
            s += (qd[:, None] - qo) * kf[None, :]
        va, vb, vc, vsa, vsb, vsc, _ = decode_record(rows + KREC, valid, table, VNA, VBA, VNB, VBB, VNC, VTURBO,
                                                     VREC)
        mask = valid[None, :] & (j[None, :] <= q_pos[:, None]) & (j[None, :] > q_pos[:, None] - window)
        m_i, l_i, acc_a, acc_b, acc_c = _step(s, mask, m_i, l_i, acc_a, acc_b, acc_c, va, vb, vc, vsa, vsb, vsc,
                                              VNB, VNC, PREC)
    if HAS_NEW:
        # the tile's own fresh tokens (positions first_pos.. of the sequence), in the last split
        n_new = tl.where(split == num_splits - 1, kv_limit - first_pos, 0)
        ones = tl.full([BLOCK_N], 1.0, tl.float32)
        for t in range(0, tl.cdiv(n_new, BLOCK_N)):
            jn = t * BLOCK_N + tl.arange(0, BLOCK_N)
            valid = jn < n_new
            new_row = (q_start + jn) * HKV + h
            ka, kb, kc = load_parts(nk_ptr, new_row, valid, KNA, KNB, KNC)
            s = _scores(qa, qb, qc, ka, kb, kc, ones, ones, ones, KNB, KNC, PREC)
            if KPOS:
                s += _bucket_terms(qo_ptr, q_row, row_valid, first_pos + jn, num_buckets, BUCKET)
            va, vb, vc = load_parts(nv_ptr, new_row, valid, VNA, VNB, VNC)
            mask = valid[None, :] & ((first_pos + jn)[None, :] <= q_pos[:, None]) & \
                ((first_pos + jn)[None, :] > q_pos[:, None] - window)
            m_i, l_i, acc_a, acc_b, acc_c = _step(s, mask, m_i, l_i, acc_a, acc_b, acc_c, va, vb, vc,
                                                  ones, ones, ones, VNB, VNC, PREC)
    store_state(out_ptr, m_ptr, l_ptr, q_row, row_valid, split, num_rows, m_i, l_i, acc_a, acc_b, acc_c,
                VNA, VNB, VNC, SINGLE)


@triton.jit(do_not_specialize=["scale", "q_s0", "q_s1"])
def _query_kernel(q_ptr, map_ptr, qf_ptr, shift_ptr, qd_ptr, scale, q_s0, q_s1, HKV: tl.constexpr, G: tl.constexpr,
                  GP: tl.constexpr, D: tl.constexpr, F: tl.constexpr, FB: tl.constexpr, MAP_STRIDE: tl.constexpr,
                  SHIFT_STRIDE: tl.constexpr, PREC: tl.constexpr, KCEN: tl.constexpr):
    """qf[t, h, :, block f] = (q[t, query heads of KV head h] * scale) @ map[h][:, block f] (D x FB): one program
    per (token, KV head, FB features); with KCEN, the first block's programs also write
    qd[t, h, :] = (q * scale) . shift[h] (shift = key centroid - key offset)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    f = tl.program_id(2) * FB + tl.arange(0, FB)
    r = tl.arange(0, GP)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + t.to(tl.int64) * q_s0 + (h * G + r)[:, None] * q_s1 + d[None, :], mask=(r < G)[:, None],
                other=0.0).to(tl.float32) * scale
    qf = tl.dot(q, tl.load(map_ptr + h * MAP_STRIDE + d[:, None] * F + f[None, :]), input_precision=PREC)
    row = (t.to(tl.int64) * HKV + h) * G + r
    tl.store(qf_ptr + row[:, None] * F + f[None, :], qf, mask=(r < G)[:, None])
    if KCEN:
        if tl.program_id(2) == 0:
            tl.store(qd_ptr + row, tl.sum(q * tl.load(shift_ptr + h * SHIFT_STRIDE + d)[None, :], 1), mask=r < G)


@triton.jit(do_not_specialize=["num_rows", "num_splits"])
def _merge_splits_kernel(part_ptr, m_ptr, l_ptr, out_ptr, num_rows, num_splits, F: tl.constexpr, SP: tl.constexpr):
    """out[row] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s over the splits of one output row."""
    row = tl.program_id(0)
    s = tl.arange(0, SP)
    live = s < num_splits
    m = tl.load(m_ptr + s * num_rows + row, mask=live, other=float("-inf"))
    l_s = tl.load(l_ptr + s * num_rows + row, mask=live, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.where(m == float("-inf"), 0.0, tl.math.exp2(m - m_max))
    f = tl.arange(0, F)
    acc = tl.load(part_ptr + (s[:, None] * num_rows + row).to(tl.int64) * F + f[None, :], mask=live[:, None],
                  other=0.0)
    tl.store(out_ptr + row.to(tl.int64) * F + f, tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0))


@triton.jit(do_not_specialize=["out_s0", "out_s1"])
def _output_kernel(feat_ptr, dec_ptr, off_ptr, out_ptr, out_s0, out_s1, HKV: tl.constexpr, G: tl.constexpr,
                   GP: tl.constexpr, D: tl.constexpr, DB: tl.constexpr, F: tl.constexpr, FB: tl.constexpr,
                   DEC_STRIDE: tl.constexpr, OFF_STRIDE: tl.constexpr, HAS_OFFSET: tl.constexpr,
                   PREC: tl.constexpr):
    """out[t, query heads of KV head h, block d] = features @ decode map[h][:, block d] (F x DB) + offset[h],
    cast to out's dtype; one program per (token, KV head, DB output columns)."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.program_id(2) * DB + tl.arange(0, DB)
    r = tl.arange(0, GP)
    live = r < G
    row = (t.to(tl.int64) * HKV + h) * G + r
    out = tl.zeros([GP, DB], tl.float32)
    for f0 in tl.static_range(0, F, FB):
        f = f0 + tl.arange(0, FB)
        x = tl.load(feat_ptr + row[:, None] * F + f[None, :], mask=live[:, None], other=0.0)
        out += tl.dot(x, tl.load(dec_ptr + h * DEC_STRIDE + f[:, None] * D + d[None, :]), input_precision=PREC)
    if HAS_OFFSET:
        out += tl.load(off_ptr + h * OFF_STRIDE + d)[None, :]
    tl.store(out_ptr + t.to(tl.int64) * out_s0 + (h * G + r)[:, None] * out_s1 + d[None, :], out,
             mask=live[:, None])


_MAPS: dict[tuple, tuple[ChannelParams | None, FeatureMaps]] = {}


def feature_maps(name: str, layout: KVCacheLayout, params: ChannelParams | None, device: torch.device) -> FeatureMaps:
    """FeatureMaps for (format, layout, params, device), built once (keyed on the params object)."""
    key = (name, layout.head_dim, layout.num_kv_heads, id(params), device)
    hit = _MAPS.get(key)
    if hit is None or hit[0] is not params:
        hit = _MAPS[key] = (params, build_feature_maps(name, layout.head_dim, layout.num_kv_heads, params, device))
    return hit[1]


def streams(layout: KVCacheLayout, key_params: ChannelParams | None, value_params: ChannelParams | None,
            device: torch.device) -> tuple[RecordSpec, RecordSpec, FeatureMaps, FeatureMaps]:
    """Record specs and feature maps of the key and value streams; ValueError for a value centroid."""
    kmaps = feature_maps(layout.key_format, layout, key_params, device)
    vmaps = feature_maps(layout.value_format, layout, value_params, device)
    if vmaps.centroid_shift is not None:
        raise ValueError("triton attention: a value centroid is not supported (keys only; `mtq calibrate` fits "
                         "none for values); the torch reference path (kernels.naive) decodes it")
    return (record_spec(layout.key_format, layout.head_dim), record_spec(layout.value_format, layout.head_dim),
            kmaps, vmaps)


def _to_features(x: torch.Tensor, maps: FeatureMaps, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Fresh vectors (T, Hkv, d) at `positions` (T,) (for a position-dependent offset) -> contiguous float32
    features (T, Hkv, F)."""
    x = x.float()
    if maps.offset is not None:
        x = x - maps.offset
    if maps.position_shift is not None:
        x = x - maps.position_shift[offset_rows(positions, maps.position_shift.shape[0])]
    if maps.inv_scale is not None:
        x = x * maps.inv_scale
    return per_head_matmul(x[:, :, None], maps.encode)[:, :, 0].contiguous()


def _check_inputs(query, cache, layout, block_table, seq_lens, query_start_loc, new_key, new_value) -> None:
    check_cache(cache, layout)
    if query.dim() != 3 or query.shape[2] != layout.head_dim or query.dtype not in (
            torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"query must be float16/bfloat16/float32 (tokens, heads, {layout.head_dim}), "
                         f"got {query.dtype} {tuple(query.shape)}")
    if query.shape[1] % layout.num_kv_heads:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {layout.num_kv_heads} KV heads")
    num_seqs = seq_lens.shape[0]
    if seq_lens.dim() != 1 or query_start_loc.shape != (num_seqs + 1,) or block_table.dim() != 2 \
            or block_table.shape[0] < num_seqs:
        raise ValueError(f"seq_lens (B,), query_start_loc (B+1,) and block_table (>=B, max_blocks) disagree: "
                         f"{tuple(seq_lens.shape)}, {tuple(query_start_loc.shape)}, {tuple(block_table.shape)}")
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    tensors = [query, cache, block_table, seq_lens, query_start_loc]
    if (new_key is None) != (new_value is None):
        raise ValueError("new_key and new_value must be given together")
    if new_key is not None:
        shape = (query.shape[0], layout.num_kv_heads, layout.head_dim)
        if tuple(new_key.shape) != shape or tuple(new_value.shape) != shape:
            raise ValueError(f"new_key/new_value must be {shape}, got {tuple(new_key.shape)}, "
                             f"{tuple(new_value.shape)}")
        tensors += [new_key, new_value]
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted({str(t.device) for t in tensors})}")


# the merge kernel's split capacities (its compiled variants): few, so that the engine-start warm-up compiles each
MERGE_WIDTHS = (8, 64)


def merge_width(splits: int) -> int:
    """The smallest of MERGE_WIDTHS that holds `splits` (at most _num_splits' 64)."""
    return next(w for w in MERGE_WIDTHS if splits <= w)


def _num_splits(programs: int, max_seq_len: int, device: torch.device) -> int:
    """Enough splits to give every SM a few programs, none shorter than MIN_SPLIT_TOKENS."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    want = triton.cdiv(4 * sms, programs)
    return max(1, min(want, triton.cdiv(max_seq_len, MIN_SPLIT_TOKENS), 64))


def check_layout(layout: KVCacheLayout) -> None:
    """ValueError unless this kernel serves the layout's head_dim."""
    check_head_dim(layout.head_dim)


def paged_attention(
    query: torch.Tensor,
    cache: torch.Tensor,
    layout: KVCacheLayout,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    key_params: ChannelParams | None = None,
    value_params: ChannelParams | None = None,
    new_key: torch.Tensor | None = None,
    new_value: torch.Tensor | None = None,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """naive.paged_attention, fused. Pass max_query_len/max_seq_len to avoid host syncs (CUDA graphs);
    num_splits overrides the split-KV heuristic; out receives the result (query's shape and dtype); window: a
    sliding window; sinks: attention sinks (both as in naive.attend)."""
    _check_inputs(query, cache, layout, block_table, seq_lens, query_start_loc, new_key, new_value)
    check_window(window)
    check_sinks(sinks, query)
    device = query.device
    kspec, vspec, kmaps, vmaps = streams(layout, key_params, value_params, device)
    tq, hq, d = query.shape
    hkv = layout.num_kv_heads
    group = hq // hkv
    num_seqs = seq_lens.shape[0]
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max()) if num_seqs else 0
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max()) if num_seqs else 0
    if out is None:
        out = torch.empty_like(query)
    if tq == 0 or num_seqs == 0:
        return out

    query = query if query.stride(2) == 1 else query.contiguous()
    gp = max(16, triton.next_power_of_2(group))  # rows of the pre/post kernels' tiles (tl.dot needs 16)
    fk, fv = kmaps.num_features, vmaps.num_features
    prec = "tf32x3" if device.type == "cuda" else "ieee"
    qf = torch.empty(tq, hkv, group, fk, dtype=torch.float32, device=device)
    shift = kmaps.centroid_shift
    qd = None if shift is None else torch.empty(tq, hkv, group, dtype=torch.float32, device=device)
    qo = None if kmaps.position_shift is None else _bucket_scores(query, kmaps.position_shift, hkv, scale * LOG2E)
    fb = min(fk, _MAP_BLOCK)
    _query_kernel[(tq, hkv, fk // fb)](query, kmaps.query, qf, qf if shift is None else shift,
                                       qf if qd is None else qd, scale * LOG2E, query.stride(0), query.stride(1),
                                       HKV=hkv, G=group, GP=gp, D=d, F=fk, FB=fb,
                                       MAP_STRIDE=_head_stride(kmaps.query),
                                       SHIFT_STRIDE=0 if shift is None else _head_stride(shift), PREC=prec,
                                       KCEN=shift is not None)
    new = None
    if new_key is not None:
        positions = token_positions(seq_lens, query_start_loc, tq) if kmaps.position_shift is not None else None
        new = (_to_features(new_key, kmaps, positions), _to_features(new_value, vmaps))
    decode = max_query_len == 1
    gpp = triton.next_power_of_2(group)  # query heads per token in a prefill tile, padded
    tok = max(1, PREFILL_ROWS // gpp)
    tiles = num_seqs if decode else tq // tok + num_seqs
    span = max_seq_len if window is None else min(max_seq_len, window + tok)  # keys one tile reads, at most
    splits = num_splits or _num_splits(tiles * hkv, span, device)
    window = NO_WINDOW if window is None else window
    rows = tq * hq
    target = torch.empty(splits, rows, fv, dtype=torch.float32, device=device)
    m = torch.empty(splits, rows, dtype=torch.float32, device=device)
    lse = torch.empty_like(m)
    if decode:
        triton_decode.launch(qf, cache, layout, kspec, vspec, block_table, seq_lens, query_start_loc, new,
                             constants(device), target, m, lse, splits, qd, qo, window)
    else:
        nk, nv = new or (qf, qf)  # placeholders: never read unless HAS_NEW
        _attention_kernel[(tiles, hkv, splits)](
            qf, qf if qd is None else qd, qf if qo is None else qo, cache, block_table, seq_lens, query_start_loc, nk,
            nv, constants(device), target, m, lse,
            block_table.stride(0), num_seqs, rows, splits, 1 if qo is None else qo.shape[-1], window,
            HQ=hq, HKV=hkv, G=group, GP=gpp, TOK=tok, BLOCK_M=max(16, tok * gpp), BLOCK_N=BLOCK_N,
            BS=layout.block_size, SLOT=layout.slot_bytes, **kspec.constexprs("K"), **vspec.constexprs("V"),
            SINGLE=splits == 1, HAS_NEW=new is not None, PREC="tf32" if device.type == "cuda" else "ieee",
            KCEN=qd is not None, KPOS=qo is not None, BUCKET=OFFSET_BUCKET,
            num_warps=NUM_WARPS, num_stages=1,  # no software pipelining: it overflows shared memory at d = 128
        )
    feats = target[0]
    if splits > 1:
        feats = torch.empty(rows, fv, dtype=torch.float32, device=device)
        _merge_splits_kernel[(rows,)](target, m, lse, feats, rows, splits, F=fv, SP=merge_width(splits))
    offset = vmaps.offset
    db = min(d, _MAP_BLOCK)
    _output_kernel[(tq, hkv, d // db)](feats, vmaps.decode, offset if offset is not None else feats, out,
                                       out.stride(0), out.stride(1), HKV=hkv, G=group, GP=gp, D=d, DB=db, F=fv,
                                       FB=min(fv, _MAP_BLOCK), DEC_STRIDE=_head_stride(vmaps.decode),
                                       OFF_STRIDE=0 if offset is None or offset.shape[0] == 1 else d,
                                       HAS_OFFSET=offset is not None, PREC=prec)
    if sinks is not None:
        _apply_sinks(out, sinks, m, lse)
    return out


def _apply_sinks(out: torch.Tensor, sinks: torch.Tensor, m: torch.Tensor, l_sum: torch.Tensor) -> None:
    """Scale each output row by the weight its keys keep next to the sink logit: sum / (sum + e^sink), i.e.
    1 / (1 + 2^(sink log2(e) - log2-sum-exp of the row's scores)) from the splits' max m and sum (splits, rows), in
    base 2. The value offset scales too: the output is linear in the normalized weights. No host sync."""
    top = m.max(0).values
    lse = top + torch.log2((torch.exp2(m - top) * l_sum).sum(0))
    tq, hq = out.shape[:2]
    keep = torch.sigmoid((lse.view(tq, hq) - sinks.float() * LOG2E) * math.log(2))
    out.mul_(keep[..., None].to(out.dtype))


def _bucket_scores(query: torch.Tensor, shift: torch.Tensor, hkv: int, scale: float) -> torch.Tensor:
    """(T, Hkv, G, buckets) float32: (query * scale) . shift[bucket, KV head] (shift (buckets, 1 or Hkv, d))."""
    q = query.float().reshape(query.shape[0], hkv, -1, query.shape[-1]) * scale
    return torch.einsum("thgd,bhd->thgb", q, shift.expand(-1, hkv, -1)).contiguous()


def _head_stride(maps: torch.Tensor) -> int:
    """Elements between two KV heads' maps: 0 when one map serves all heads."""
    return 0 if maps.shape[0] == 1 else maps.stride(0)
