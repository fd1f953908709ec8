"""Quantize-on-write: one Triton launch encodes a layer's new K and V tokens into the paged cache.

Same contract as `naive.store`, with two device-side policies (no host syncs, CUDA-graph safe):
a slot < 0 or beyond the cache is skipped, and a vector that is not finite after calibration gets a
record whose bfloat16 scale is NaN (it decodes to NaN, so attention shows it) instead of a ValueError.
Records are byte-identical to `KVFormat.encode` (see triton_encode.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats.base import CALIBRATION_OVERFLOW, SUPPORTED_DTYPES
from ..formats.params import OFFSET_BUCKET, ChannelParams
from ..formats.registry import get_format
from .layout import KVCacheLayout
from .naive import check_store_args
from .triton_encode import encode_block_rotation, encode_turboquant, encoder_constants

FAMILIES = {"turboquant": 0, "isoquant": 4, "planarquant": 2}  # rotation block size; 0 = TurboQuant
HEAD_DIMS = (16, 32, 64, 128, 256, 512)


@triton.jit
def _encode(x_ptr, x_offs, x_sd, chan, perm, consts, out, live, ok, ROWS: tl.constexpr, LOG2D: tl.constexpr,
            K: tl.constexpr, BITS: tl.constexpr, CEN: tl.constexpr):
    if K == 0:
        encode_turboquant(x_ptr, x_offs, x_sd, chan, perm, consts, out, live, ok, ROWS, LOG2D, BITS, CEN)
    else:
        encode_block_rotation(x_ptr, x_offs, x_sd, chan, consts, out, live, ok, ROWS, LOG2D, K, BITS, CEN)


_RUNTIME_INTS = ("rows", "num_slots", "num_heads", "block_size", "k_st", "k_sh", "k_sd", "v_st", "v_sh", "v_sd",
                 "c_sb", "c_sh", "c_st", "k_rows")


@triton.jit(do_not_specialize=_RUNTIME_INTS)  # one compiled kernel per format pair, whatever the batch
def _store_kernel(key, value, cache, slots, positions, k_consts, k_chan, k_perm, v_consts, v_chan, v_perm,
                  rows, num_slots, num_heads, block_size,
                  k_st, k_sh, k_sd, v_st, v_sh, v_sd, c_sb, c_sh, c_st, k_rows,
                  KEY_BYTES: tl.constexpr, ROWS: tl.constexpr, LOG2D: tl.constexpr,
                  K_K: tl.constexpr, K_BITS: tl.constexpr, K_CEN: tl.constexpr, K_POS: tl.constexpr,
                  BUCKET: tl.constexpr, V_K: tl.constexpr, V_BITS: tl.constexpr, V_CEN: tl.constexpr):
    """Rows are (token, KV head) pairs; each program encodes ROWS of them, their key records (program_id(1) = 0)
    or their value records (1). Loads wait for nothing but `live` (the row exists); stores need a valid slot.
    With K_POS the key channel table has k_rows rows per head, one per BUCKET positions of the token."""
    D: tl.constexpr = 1 << LOG2D
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = r < rows
    t = (r // num_heads).to(tl.int64)
    h = r % num_heads
    slot = tl.load(slots + t, mask=live, other=-1).to(tl.int64)
    ok = live & (slot >= 0) & (slot < num_slots)
    out = cache + (slot // block_size) * c_sb + h * c_sh + (slot % block_size) * c_st
    if tl.program_id(1) == 0:
        k_row = h
        if K_POS:
            bucket = tl.minimum(tl.maximum(tl.load(positions + t, mask=live, other=0), 0) // BUCKET, k_rows - 1)
            k_row = bucket * num_heads + h
        _encode(key, t * k_st + h * k_sh, k_sd, k_chan + k_row * 3 * D, k_perm + h * D, k_consts, out, live, ok,
                ROWS, LOG2D, K_K, K_BITS, K_CEN)
    else:
        _encode(value, t * v_st + h * v_sh, v_sd, v_chan + h * 3 * D, v_perm + h * D, v_consts, out + KEY_BYTES,
                live, ok, ROWS, LOG2D, V_K, V_BITS, V_CEN)


_TABLES: dict[tuple, tuple] = {}


def _stream_tables(name: str, layout: KVCacheLayout, params: ChannelParams | None, device: torch.device) -> tuple:
    """(consts, chan, perm, has centroid) on `device` for one stream, built once per params object; chan is
    (rows, heads, 3, d): offset, scale, centroid, with one row per position_offset row (else one)."""
    key = (name, layout.head_dim, layout.num_kv_heads, str(device), id(params))
    hit = _TABLES.get(key)
    if hit is not None and hit[0] is params:
        return hit[1]
    fmt = get_format(name)
    d, heads = layout.head_dim, layout.num_kv_heads
    given, params = params, fmt._check_params(params, d)  # validates (host syncs here, once per params object)

    def per_head(t: torch.Tensor | None, fill: float) -> torch.Tensor:
        if t is None:
            return torch.full((heads, d), fill)
        try:
            return torch.broadcast_to(t.detach().cpu().to(torch.float32), (heads, d))
        except RuntimeError:
            raise ValueError(f"{name}: channel params of shape {tuple(t.shape)} do not broadcast to "
                             f"({heads}, {d})") from None

    if params.positional:
        offsets = [per_head(row, 0.0) for row in params.position_offset]
    else:
        offsets = [per_head(params.offset, 0.0)]
    chan = torch.stack([torch.stack((offset, per_head(params.scale, 1.0), per_head(params.centroid, 0.0)), dim=1)
                        for offset in offsets])
    if fmt.family == "turboquant":
        perm = fmt._permutation(params, d, torch.device("cpu"))
        try:
            perm = torch.broadcast_to(perm, (heads, d))
        except RuntimeError:
            raise ValueError(f"{name}: outliers of shape {tuple(params.outliers.shape)} do not broadcast to "
                             f"({heads}, k)") from None
    else:
        perm = torch.zeros(1)
    tables = (encoder_constants(name, d).to(device), chan.contiguous().to(device),
              perm.to(torch.int32).contiguous().to(device), params.centroid is not None)
    _TABLES[key] = (given, tables)  # holding `given` keeps its id from being reused
    return tables


def check_head_dim(head_dim: int) -> None:
    """Raise ValueError unless the Triton encoders support head_dim (powers of two)."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"triton store: unsupported head_dim {head_dim}; supported: {', '.join(map(str, HEAD_DIMS))}")


def check_layout(layout: KVCacheLayout) -> None:
    """ValueError unless the store kernel serves the layout."""
    check_head_dim(layout.head_dim)


def store(
    key: torch.Tensor,
    value: torch.Tensor,
    cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    layout: KVCacheLayout,
    key_params: ChannelParams | None = None,
    value_params: ChannelParams | None = None,
    positions: torch.Tensor | None = None,
    *,
    rows_per_program: int = 1,
    num_warps: int | None = None,
    keys_only: bool = False,
) -> None:
    """Encode key/value (T, num_kv_heads, head_dim) into the slots `slot_mapping` (T,) names, in one launch.

    Slot s is token s % block_size of block s // block_size; slots < 0 or beyond the cache are skipped.
    positions (T,): the tokens' positions, needed by a key position_offset.
    num_warps: per program; None picks by batch size (`default_warps`). keys_only: write the key records only
    (the slots' value bytes stay as they were; `value` is still checked).
    """
    check_head_dim(layout.head_dim)
    check_store_args(key, value, cache, slot_mapping, layout, key_params, value_params, positions)
    for name, t in (("key", key), ("value", value)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"store: {name} dtype {t.dtype} is not float16, bfloat16 or float32")
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"store: slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    if {key.device, value.device, slot_mapping.device} != {cache.device}:
        raise ValueError(f"store: key, value, slot_mapping and cache must share a device, got {key.device}, "
                         f"{value.device}, {slot_mapping.device}, {cache.device}")
    if cache.stride(-1) != 1:
        raise ValueError("store: the cache's last dim must be contiguous")
    if rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
        raise ValueError(f"store: rows_per_program must be a power of two, got {rows_per_program}")
    if num_warps is not None and num_warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"store: num_warps must be a power of two from 1 to 32, got {num_warps}")
    rows = key.shape[0] * layout.num_kv_heads
    if rows == 0:
        return
    k_consts, k_chan, k_perm, k_cen = _stream_tables(layout.key_format, layout, key_params, cache.device)
    v_consts, v_chan, v_perm, v_cen = _stream_tables(layout.value_format, layout, value_params, cache.device)
    k_fmt, v_fmt = get_format(layout.key_format), get_format(layout.value_format)
    grid = (triton.cdiv(rows, rows_per_program), 1 if keys_only else 2)
    k_pos = key_params is not None and key_params.positional
    _store_kernel[grid](
        key, value, cache, slot_mapping, positions if k_pos else slot_mapping, k_consts, k_chan, k_perm, v_consts,
        v_chan, v_perm, rows, cache.shape[0] * layout.block_size, layout.num_kv_heads, layout.block_size,
        *key.stride(), *value.stride(), *cache.stride()[:3], k_chan.shape[0],
        KEY_BYTES=layout.key_bytes, ROWS=rows_per_program, LOG2D=layout.head_dim.bit_length() - 1,
        K_K=FAMILIES[k_fmt.family], K_BITS=_code_bits(k_fmt), K_CEN=k_cen, K_POS=k_pos, BUCKET=OFFSET_BUCKET,
        V_K=FAMILIES[v_fmt.family], V_BITS=_code_bits(v_fmt), V_CEN=v_cen,
        num_warps=num_warps or default_warps(rows, layout.head_dim, k_cen), enable_fp_fusion=False,
    )


def default_warps(rows: int, head_dim: int = 128, key_centroid: bool = False) -> int:
    """Warps per program for `rows` (token, KV head) pairs (BENCHMARKS.md, "Store's share"): a decode-sized launch
    is one latency-bound chain per program, which 4 warps shorten at head_dim 128 without a key centroid (H100) but
    lengthen at head_dim 64 or with one (the default calibration; H200: 12-19 against 29-43 µs); large launches are
    throughput-bound."""
    if rows > 64:
        return 2 if rows <= 256 else 1
    return 1 if head_dim < 128 or key_centroid else 4


def encode(x: torch.Tensor, name: str, params: ChannelParams | None = None,
           positions: torch.Tensor | None = None) -> torch.Tensor:
    """`KVFormat.encode` of (..., num_kv_heads, head_dim) vectors through the store kernel (byte-identical records,
    one launch); ValueError for non-finite input, before or after calibration, as the reference. positions:
    the vectors' positions (x's leading dims), for a position_offset."""
    if x.dim() < 2:
        raise ValueError(f"{name}: encode takes (..., num_kv_heads, head_dim) vectors, got shape {tuple(x.shape)}")
    if x.dtype in SUPPORTED_DTYPES and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: input contains NaN or Inf")
    heads, d = x.shape[-2:]
    layout = KVCacheLayout(name, name, d, heads, 1)
    flat = x.reshape(-1, heads, d)
    cache = torch.empty(layout.shape(flat.shape[0]), dtype=torch.uint8, device=x.device)
    slots = torch.arange(flat.shape[0], device=x.device)
    if positions is not None:
        positions = torch.broadcast_to(positions.to(x.device), x.shape[:-2]).reshape(-1)
    store(flat, flat, cache, slots, layout, params, positions=positions, keys_only=True)
    records = cache[:, :, 0, :layout.key_bytes]
    high = layout.key_bytes - get_format(name).flag_byte  # the scale's high byte; the kernel's NaN scale is 0x7FC0
    if bool(((records[..., high] == 0x7F) & (records[..., high - 1] == 0xC0)).any()):
        raise ValueError(f"{name}: {CALIBRATION_OVERFLOW}")
    return records.reshape(*x.shape[:-1], layout.key_bytes)


def _code_bits(fmt) -> int:
    """The kernel's BITS: code width of IsoQuant/PlanarQuant, m (regular-half bits) of TurboQuant."""
    return fmt.mse_bits if fmt.family == "turboquant" else fmt.bits
