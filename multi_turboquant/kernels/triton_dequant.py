"""Paged records -> dense K/V head vectors for the FlashAttention prefill path (kernels/prefill.py): one Triton launch
decodes every record to its features (feature_space.py), then one per-head matmul per stream maps them to head
vectors. naive.gather is the reference."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats.params import ChannelParams, offset_rows
from .feature_space import FeatureMaps, per_head_matmul
from .layout import KVCacheLayout
from .naive import check_cache
from . import prefill
from .triton_attention import check_layout, streams  # noqa: F401 (check_layout: ops.backend_for)
from .triton_common import constants, decode_record, store_parts

BLOCK_T = 32  # tokens per program


@triton.jit
def _scaled(x, s, N: tl.constexpr):
    """x * s per row for a present part (N > 0); 0.0 for an absent one."""
    if N > 0:
        return x * s[:, None]
    else:
        return 0.0


@triton.jit
def _store_features(rows, valid, table, f_ptr, flag_ptr, out_row, NA: tl.constexpr, BA: tl.constexpr,
                    NB: tl.constexpr, BB: tl.constexpr, NC: tl.constexpr, TURBO: tl.constexpr, REC: tl.constexpr,
                    FLAG: tl.constexpr):
    a, b, c, sa, sb, sc, flag = decode_record(rows, valid, table, NA, BA, NB, BB, NC, TURBO, REC)
    store_parts(f_ptr, out_row, valid, a * sa[:, None], _scaled(b, sb, NB), _scaled(c, sc, NC), NA, NB, NC)
    if FLAG:
        tl.store(flag_ptr + out_row, flag, mask=valid)


@triton.jit(do_not_specialize=["bt_stride"])
def _features_kernel(cache_ptr, bt_ptr, seg_ptr, table, kf_ptr, vf_ptr, flag_ptr, bt_stride,
                     HKV: tl.constexpr, BS: tl.constexpr, SLOT: tl.constexpr, BLOCK: tl.constexpr,
                     KNA: tl.constexpr, KBA: tl.constexpr, KNB: tl.constexpr, KBB: tl.constexpr, KNC: tl.constexpr,
                     KTURBO: tl.constexpr, KREC: tl.constexpr,
                     VNA: tl.constexpr, VBA: tl.constexpr, VNB: tl.constexpr, VBB: tl.constexpr, VNC: tl.constexpr,
                     VTURBO: tl.constexpr, VREC: tl.constexpr, KFLAG: tl.constexpr):
    """Features of KV head h of segment s = (block-table row, first token, tokens, output row): its tokens
    tile*BLOCK.. into output rows from the segment's own."""
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
    out_row = (tl.load(seg_ptr + 4 * s + 3) + i).to(tl.int64) * HKV + h
    _store_features(rows, valid, table, kf_ptr, flag_ptr, out_row, KNA, KBA, KNB, KBB, KNC, KTURBO, KREC, KFLAG)
    _store_features(rows + KREC, valid, table, vf_ptr, flag_ptr, out_row, VNA, VBA, VNB, VBB, VNC, VTURBO, VREC,
                    False)


def _head_vectors(features: torch.Tensor, maps: FeatureMaps, flags: torch.Tensor | None,
                  positions: torch.Tensor | None) -> torch.Tensor:
    """Features (T, H, F) -> head vectors (T, H, d) float32: decode map, offset, position offset, and for a flagged
    record the centroid instead of both offsets."""
    x = per_head_matmul(features[:, :, None], maps.decode)[:, :, 0]
    if maps.offset is not None:
        x += maps.offset
    shift = 0.0
    if maps.position_shift is not None:
        shift = maps.position_shift[offset_rows(positions, maps.position_shift.shape[0])]
    if maps.centroid_shift is not None:
        shift = shift + flags[..., None] * (maps.centroid_shift - shift)
    return x + shift


def decode_sequences(cache: torch.Tensor, layout: KVCacheLayout, plan: prefill.Plan,
                     key_params: ChannelParams | None, value_params: ChannelParams | None,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """See prefill.decode_sequences: K and V of tokens 0..lengths[b]-1 of each row b, concatenated, in dtype. One
    launch per GATHER_TOKENS tokens bounds the float32 temporaries."""
    check_cache(cache, layout)
    device = cache.device
    kspec, vspec, kmaps, vmaps = streams(layout, key_params, value_params, device)
    hkv, d = layout.num_kv_heads, layout.head_dim
    keys = torch.empty(sum(plan.lengths), hkv, d, dtype=dtype, device=device)
    values = torch.empty_like(keys)
    done = 0
    for group, seg, positions in zip(plan.groups, plan.seg, plan.positions):
        total = sum(n for _, _, n in group)
        kf = torch.empty(total, hkv, kmaps.num_features, dtype=torch.float32, device=device)
        vf = torch.empty(total, hkv, vmaps.num_features, dtype=torch.float32, device=device)
        flags = None if kmaps.centroid_shift is None else torch.empty(total, hkv, dtype=torch.float32, device=device)
        grid = (len(group), triton.cdiv(max(n for _, _, n in group), BLOCK_T), hkv)
        _features_kernel[grid](cache, plan.block_table, seg, constants(device), kf, vf,
                               kf if flags is None else flags, plan.block_table.stride(0), HKV=hkv,
                               BS=layout.block_size, SLOT=layout.slot_bytes, BLOCK=BLOCK_T, **kspec.constexprs("K"),
                               **vspec.constexprs("V"), KFLAG=flags is not None)
        keys[done:done + total] = _head_vectors(kf, kmaps, flags, positions)
        values[done:done + total] = _head_vectors(vf, vmaps, None, None)
        done += total
    return keys, values
