"""Launch every Triton kernel variant a layer will use once, on a tiny cache of its own, so that Triton compiles them
while the engine starts instead of on the first requests that need them (a latency spike vLLM logs as "Triton
kernel JIT compilation during inference")."""
from __future__ import annotations

import torch
import triton

from ..formats.params import ChannelParams
from . import prefill, triton_attention, triton_dequant, triton_store
from .layout import KVCacheLayout

# token counts whose store launches cover every class of triton_store.default_warps (rows = tokens x KV heads)
STORE_ROWS = (1, 65, 257)


def warm_up(layout: KVCacheLayout, key_params: ChannelParams | None, value_params: ChannelParams | None,
            num_heads: int, dtype: torch.dtype, device: torch.device, window: int | None = None,
            sinks: torch.Tensor | None = None, dequant: bool = True) -> None:
    """Store (each warps class), decode and prefill attention (one split, and splits for each merge variant), and,
    with `dequant`, the FlashAttention path's decoder, for this layer's layout, calibration, query heads, dtype,
    window and sinks."""
    hkv, d = layout.num_kv_heads, layout.head_dim
    counts = sorted({triton.cdiv(rows, hkv) for rows in STORE_ROWS})
    n = counts[-1]
    cache = torch.zeros(layout.shape(triton.cdiv(n, layout.block_size)), dtype=torch.uint8, device=device)
    for tokens in counts:
        kv = torch.randn(tokens, hkv, d, device=device, dtype=dtype)
        slots = torch.arange(tokens, device=device)
        triton_store.store(kv, kv, cache, slots, layout, key_params, value_params, slots)
    table = torch.arange(cache.shape[0], dtype=torch.int32, device=device)[None]
    seq_lens = torch.tensor([n], dtype=torch.int32, device=device)
    for queries in (1, n):
        query = torch.randn(queries, num_heads, d, device=device, dtype=dtype)
        starts = torch.tensor([0, queries], dtype=torch.int32, device=device)
        for splits in (1, *triton_attention.MERGE_WIDTHS):  # one split, and each merge kernel variant
            triton_attention.paged_attention(query, cache, layout, table, seq_lens, starts, 1.0, key_params,
                                             value_params, max_query_len=queries, max_seq_len=n, num_splits=splits,
                                             window=window, sinks=sinks)
    if dequant:
        triton_dequant.decode_sequences(cache, layout, prefill.Plan.build(table, [n]), key_params, value_params,
                                        dtype)
