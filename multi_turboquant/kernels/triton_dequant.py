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


@triton.jit
def _mapped(x, dec, ROW0: tl.constexpr, N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """x (BLOCK_T, N) @ rows ROW0..ROW0+N-1 of the (F, D) decode map at dec."""
    w = tl.load(dec + (ROW0 + tl.arange(0, N))[:, None] * D + tl.arange(0, D)[None, :])
    return tl.dot(x, w, input_precision=PREC)


@triton.jit
def _head_vectors(rows, valid, table, dec, NA: tl.constexpr, BA: tl.constexpr, NB: tl.constexpr, BB: tl.constexpr,
                  NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_T, D) float32 head vectors of the records at `rows` before any offset, and their centroid flags."""
    a, b, c, sa, sb, sc, flag = decode_record(rows, valid, table, NA, BA, NB, BB, NC, TURBO, REC)
    x = _mapped(a * sa[:, None], dec, 0, NA, D, PREC)
    if NB > 0:
        x += _mapped(b * sb[:, None], dec, NA, NB, D, PREC)
    if NC > 0:
        x += _mapped(c * sc[:, None], dec, NA + NB, NC, D, PREC)
    return x, flag


@triton.jit(do_not_specialize=["bt_stride", "pos_rows"])
def _decode_kernel(cache_ptr, bt_ptr, seg_ptr, table, k_dec, k_off, k_pos, k_cen, v_dec, v_off, k_out, v_out,
                   bt_stride, pos_rows, HKV: tl.constexpr, BS: tl.constexpr, SLOT: tl.constexpr, BLOCK: tl.constexpr,
                   D: tl.constexpr, K_DEC_STRIDE: tl.constexpr, V_DEC_STRIDE: tl.constexpr, BUCKET: tl.constexpr,
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
    out = ((tl.load(seg_ptr + 4 * s + 3) + i).to(tl.int64) * HKV + h)[:, None] * D + tl.arange(0, D)[None, :]
    d = tl.arange(0, D)
    k, flag = _head_vectors(rows, valid, table, k_dec + h * K_DEC_STRIDE, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC, D,
                            PREC)
    if K_OFF:
        k += tl.load(k_off + h * D + d)[None, :]
    shift = tl.zeros((BLOCK, D), tl.float32)
    if K_POS:
        bucket = tl.minimum(j // BUCKET, pos_rows - 1).to(tl.int64)
        shift = tl.load(k_pos + (bucket * HKV + h)[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
    if K_CEN:
        shift += flag[:, None] * (tl.load(k_cen + h * D + d)[None, :] - shift)
    k += shift
    tl.store(k_out + out, k.to(k_out.dtype.element_ty), mask=valid[:, None])
    v, _ = _head_vectors(rows + KREC, valid, table, v_dec + h * V_DEC_STRIDE, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC,
                         D, PREC)
    if V_OFF:
        v += tl.load(v_off + h * D + d)[None, :]
    tl.store(v_out + out, v.to(v_out.dtype.element_ty), mask=valid[:, None])


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
    for group, seg in zip(plan.groups, plan.seg):
        total = sum(n for _, _, n in group)
        grid = (len(group), triton.cdiv(max(n for _, _, n in group), BLOCK_T), hkv)
        pos = kmaps.position_shift
        _decode_kernel[grid](
            cache, plan.block_table, seg, constants(device), kmaps.decode,
            none if kmaps.offset is None else kmaps.offset, none if pos is None else pos,
            none if kmaps.centroid_shift is None else kmaps.centroid_shift, vmaps.decode,
            none if vmaps.offset is None else vmaps.offset, keys[done:], values[done:],
            plan.block_table.stride(0), 1 if pos is None else pos.shape[0], HKV=hkv, BS=layout.block_size,
            SLOT=layout.slot_bytes, BLOCK=BLOCK_T, D=d, K_DEC_STRIDE=_head_stride(kmaps.decode),
            V_DEC_STRIDE=_head_stride(vmaps.decode), BUCKET=OFFSET_BUCKET, **kspec.constexprs("K"),
            **vspec.constexprs("V"), K_OFF=kmaps.offset is not None, K_POS=pos is not None,
            K_CEN=kmaps.centroid_shift is not None, V_OFF=vmaps.offset is not None,
            PREC="tf32x3" if device.type == "cuda" else "ieee")
        done += total
    return keys, values
