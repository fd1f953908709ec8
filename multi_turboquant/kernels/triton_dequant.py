"""Paged records -> dense K/V head vectors for the FlashAttention prefill path (kernels/prefill.py), in one Triton
launch: each program decodes a tile of records to their features (feature_space.py) and maps them to head vectors
in registers (the per-head decode map, offset, position offset, centroid), written in the output dtype.
naive.gather is the reference."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats.params import OFFSET_BUCKET, ChannelParams
from .layout import KVCacheLayout
from .naive import check_cache
from . import prefill
from .triton_attention import _head_stride, check_layout, streams  # noqa: F401 (check_layout: ops.backend_for)
from .triton_common import constants, decode_record

BLOCK_T = 32  # tokens per program
MAP_BLOCK = 64  # head-vector columns per step: a (features, 64) float32 map block fits shared memory


@triton.jit
def _mapped(x, dec, ROW0: tl.constexpr, N: tl.constexpr, D: tl.constexpr, cols, PREC: tl.constexpr):
    """x (BLOCK_T, N) @ rows ROW0..ROW0+N-1, columns `cols`, of the (F, D) decode map at dec."""
    w = tl.load(dec + (ROW0 + tl.arange(0, N))[:, None] * D + cols[None, :])
    return tl.dot(x, w, input_precision=PREC)


@triton.jit
def _write(rows, valid, table, dec, off, pos, cen, shift_rows, out_ptr, out, NA: tl.constexpr, BA: tl.constexpr,
           NB: tl.constexpr, BB: tl.constexpr, NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr,
           D: tl.constexpr, DB: tl.constexpr, HAS_OFF: tl.constexpr, HAS_POS: tl.constexpr, HAS_CEN: tl.constexpr,
           PREC: tl.constexpr):
    """Head vectors of the records at `rows` to out_ptr + out (BLOCK_T,) row offsets, DB columns at a time (a map
    block stays small enough for shared memory at head_dim 256): features @ decode map + offset + shift, where the
    shift is the position offset (row shift_rows of pos) or, for a flagged record, the centroid."""
    a, b, c, sa, sb, sc, flag = decode_record(rows, valid, table, NA, BA, NB, BB, NC, TURBO, REC)
    a = a * sa[:, None]
    if NB > 0:
        b = b * sb[:, None]
    if NC > 0:
        c = c * sc[:, None]
    for d0 in tl.static_range(0, D, DB):
        cols = d0 + tl.arange(0, DB)
        x = _mapped(a, dec, 0, NA, D, cols, PREC)
        if NB > 0:
            x += _mapped(b, dec, NA, NB, D, cols, PREC)
        if NC > 0:
            x += _mapped(c, dec, NA + NB, NC, D, cols, PREC)
        if HAS_OFF:
            x += tl.load(off + cols)[None, :]
        shift = tl.zeros(x.shape, tl.float32)
        if HAS_POS:
            shift = tl.load(pos + shift_rows[:, None] * D + cols[None, :], mask=valid[:, None], other=0.0)
        if HAS_CEN:
            shift += flag[:, None] * (tl.load(cen + cols)[None, :] - shift)
        x += shift
        tl.store(out_ptr + out[:, None] + cols[None, :], x.to(out_ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit(do_not_specialize=["bt_stride", "pos_rows"])
def _decode_kernel(cache_ptr, bt_ptr, seg_ptr, table, k_dec, k_off, k_pos, k_cen, v_dec, v_off, k_out, v_out,
                   bt_stride, pos_rows, HKV: tl.constexpr, BS: tl.constexpr, SLOT: tl.constexpr, BLOCK: tl.constexpr,
                   D: tl.constexpr, DB: tl.constexpr, K_DEC_STRIDE: tl.constexpr, V_DEC_STRIDE: tl.constexpr,
                   BUCKET: tl.constexpr,
                   KNA: tl.constexpr, KBA: tl.constexpr, KNB: tl.constexpr, KBB: tl.constexpr, KNC: tl.constexpr,
                   KTURBO: tl.constexpr, KREC: tl.constexpr,
                   VNA: tl.constexpr, VBA: tl.constexpr, VNB: tl.constexpr, VBB: tl.constexpr, VNC: tl.constexpr,
                   VTURBO: tl.constexpr, VREC: tl.constexpr, K_OFF: tl.constexpr, K_POS: tl.constexpr,
                   K_CEN: tl.constexpr, V_OFF: tl.constexpr, PREC: tl.constexpr):
    """K and V head vectors of KV head h of segment s = (block-table row, first token, tokens, output row): its tokens
    tile*BLOCK.. into output rows from the segment's own. A key's offset: offset + position offset (row
    position // BUCKET of k_pos, the last past it), or the centroid for a flagged record."""
    s = tl.program_id(0)
    tile = tl.program_id(1)
    h = tl.program_id(2)
    n = tl.load(seg_ptr + 4 * s + 2)
    if tile * BLOCK >= n:
        return
    i = tile * BLOCK + tl.arange(0, BLOCK)
    valid = i < n
    j = tl.load(seg_ptr + 4 * s + 1) + i  # token positions in the row
    bt_row = tl.load(seg_ptr + 4 * s).to(tl.int64)
    page = tl.load(bt_ptr + bt_row * bt_stride + j // BS, mask=valid, other=0).to(tl.int64)
    rows = cache_ptr + ((page * HKV + h) * BS + j % BS) * SLOT
    out = ((tl.load(seg_ptr + 4 * s + 3) + i).to(tl.int64) * HKV + h) * D
    shift_rows = tl.minimum(j // BUCKET, pos_rows - 1).to(tl.int64) * HKV + h
    _write(rows, valid, table, k_dec + h * K_DEC_STRIDE, k_off + h * D, k_pos, k_cen + h * D, shift_rows, k_out, out,
           KNA, KBA, KNB, KBB, KNC, KTURBO, KREC, D, DB, K_OFF, K_POS, K_CEN, PREC)
    _write(rows + KREC, valid, table, v_dec + h * V_DEC_STRIDE, v_off + h * D, v_off, v_off, shift_rows, v_out, out,
           VNA, VBA, VNB, VBB, VNC, VTURBO, VREC, D, DB, V_OFF, False, False, PREC)


def decode_sequences(cache: torch.Tensor, layout: KVCacheLayout, plan: prefill.Plan,
                     key_params: ChannelParams | None, value_params: ChannelParams | None,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """See prefill.decode_sequences: K and V of tokens 0..lengths[b]-1 of each row b, concatenated, in dtype; one
    launch per group of the plan (at most GATHER_TOKENS tokens)."""
    check_cache(cache, layout)
    plan.check(layout)
    device = cache.device
    kspec, vspec, kmaps, vmaps = streams(layout, key_params, value_params, device)
    hkv, d = layout.num_kv_heads, layout.head_dim
    keys = torch.empty(sum(plan.lengths), hkv, d, dtype=dtype, device=device)
    values = torch.empty_like(keys)
    done = 0
    none = keys  # a placeholder pointer for absent tables (never read)
    pos = kmaps.position_shift
    for group, seg in zip(plan.groups, plan.seg):
        total = sum(n for _, _, n in group)
        grid = (len(group), triton.cdiv(max(n for _, _, n in group), BLOCK_T), hkv)
        _decode_kernel[grid](
            cache, plan.block_table, seg, constants(device), kmaps.decode,
            none if kmaps.offset is None else kmaps.offset, none if pos is None else pos,
            none if kmaps.centroid_shift is None else kmaps.centroid_shift, vmaps.decode,
            none if vmaps.offset is None else vmaps.offset, keys[done:], values[done:],
            plan.block_table.stride(0), 1 if pos is None else pos.shape[0], HKV=hkv, BS=layout.block_size,
            SLOT=layout.slot_bytes, BLOCK=BLOCK_T, D=d, DB=min(d, MAP_BLOCK), K_DEC_STRIDE=_head_stride(kmaps.decode),
            V_DEC_STRIDE=_head_stride(vmaps.decode), BUCKET=OFFSET_BUCKET, **kspec.constexprs("K"),
            **vspec.constexprs("V"), K_OFF=kmaps.offset is not None, K_POS=pos is not None,
            K_CEN=kmaps.centroid_shift is not None, V_OFF=vmaps.offset is not None,
            PREC="tf32x3" if device.type == "cuda" else "ieee")
        done += total
    return keys, values
