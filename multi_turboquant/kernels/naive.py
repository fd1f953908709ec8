"""Reference paged-cache ops in plain PyTorch: the specification the Triton kernels are tested against.

All ops work on one layer's cache laid out as `KVCacheLayout` describes. Readable, not fast: every
call decodes the records it reads with the formats' reference decoder.
"""
from __future__ import annotations

import torch

from ..formats.params import ChannelParams
from ..formats.registry import get_format
from .layout import KVCacheLayout


def check_cache(cache: torch.Tensor, layout: KVCacheLayout) -> None:
    """Raise ValueError unless `cache` is a uint8 tensor of the layout's shape (any number of blocks)."""
    if cache.dtype != torch.uint8 or cache.dim() != 4 or tuple(cache.shape[1:]) != layout.shape(0)[1:]:
        raise ValueError(f"KV cache must be uint8 of shape (num_blocks, {', '.join(map(str, layout.shape(0)[1:]))}), "
                         f"got {cache.dtype} {tuple(cache.shape)}")


def token_positions(seq_lens: torch.Tensor, query_start_loc: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(num_tokens,) int64: each query token's position in its sequence (whose last tokens are its queries); tokens
    past query_start_loc[-1] (padding) get 0. No host sync."""
    starts = query_start_loc.long()
    index = torch.arange(num_tokens, device=starts.device)
    seq = torch.searchsorted(starts[1:], index, right=True).clamp_max(max(seq_lens.shape[0] - 1, 0))
    return torch.where(index < starts[-1], seq_lens.long()[seq] - (starts[seq + 1] - index), 0)


def check_store_args(key: torch.Tensor, value: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
                     layout: KVCacheLayout, key_params: ChannelParams | None = None,
                     value_params: ChannelParams | None = None, positions: torch.Tensor | None = None) -> None:
    """Raise ValueError unless the shapes fit `store` (positions (T,) integers where the key offset needs them)."""
    check_cache(cache, layout)
    shape = (key.shape[0], layout.num_kv_heads, layout.head_dim)
    if tuple(key.shape) != shape or tuple(value.shape) != shape or tuple(slot_mapping.shape) != (key.shape[0],):
        raise ValueError(f"store: key/value must be {shape} and slot_mapping ({shape[0]},), got "
                         f"{tuple(key.shape)}, {tuple(value.shape)}, {tuple(slot_mapping.shape)}")
    if value_params is not None and value_params.positional:
        raise ValueError("store: a position_offset applies to keys only")
    if key_params is not None and key_params.positional:
        if positions is None or tuple(positions.shape) != (key.shape[0],) or positions.dtype not in (torch.int32,
                                                                                                     torch.int64):
            got = None if positions is None else f"{positions.dtype} {tuple(positions.shape)}"
            raise ValueError(f"store: the key position_offset needs int positions ({key.shape[0]},), got {got}")


def store(
    key: torch.Tensor,
    value: torch.Tensor,
    cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    layout: KVCacheLayout,
    key_params: ChannelParams | None = None,
    value_params: ChannelParams | None = None,
    positions: torch.Tensor | None = None,
) -> None:
    """Encode key/value (T, num_kv_heads, head_dim) into the slots `slot_mapping` (T,) names; slot < 0 is skipped.

    Slot s is token s % block_size of block s // block_size. positions (T,): the tokens' positions in their
    sequences, needed when the key params have a position_offset.
    """
    check_store_args(key, value, cache, slot_mapping, layout, key_params, value_params, positions)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    if slots.numel() == 0:
        return
    if int(slots.max()) >= cache.shape[0] * layout.block_size:
        raise ValueError(f"store: slot {int(slots.max())} is beyond the cache's {cache.shape[0]} blocks")
    if key_params is not None and key_params.positional:
        key_params = key_params.at(positions[keep])
    k = get_format(layout.key_format).encode(key[keep], key_params)
    v = get_format(layout.value_format).encode(value[keep], value_params)
    block, offset = slots // layout.block_size, slots % layout.block_size
    cache[block, :, offset] = torch.cat([k, v], dim=-1)


def gather(
    cache: torch.Tensor,
    layout: KVCacheLayout,
    block_table: torch.Tensor,
    length: int,
    key_params: ChannelParams | None = None,
    value_params: ChannelParams | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode tokens start..length-1 of each row of block_table (B, blocks) to float32 K, V of
    (B, length - start, num_kv_heads, head_dim); one decode call for all rows."""
    first, n = start // layout.block_size, -(-length // layout.block_size)
    rows = block_table.shape[0]
    # entries past a row's own pages may be any padding value: clamp them (their tokens are sliced off below)
    slots = cache[block_table[:, first:n].long().clamp(0, cache.shape[0] - 1)].transpose(2, 3)
    skip = start - first * layout.block_size
    slots = slots.reshape(rows, -1, layout.num_kv_heads, layout.slot_bytes)[:, skip:skip + length - start]
    key_params, value_params = (None if p is None else p.map(lambda t: t.to(cache.device))
                                for p in (key_params, value_params))  # calibration follows the records' device
    if key_params is not None and key_params.positional:  # token i of a row is at position start + i
        key_params = key_params.at(torch.arange(start, length, device=cache.device))
    k = get_format(layout.key_format).decode(slots[..., :layout.key_bytes], layout.head_dim, torch.float32, key_params)
    v = get_format(layout.value_format).decode(slots[..., layout.key_bytes:], layout.head_dim, torch.float32,
                                               value_params)
    return k, v


def check_window(window: int | None) -> None:
    """ValueError unless `window` is None (full attention) or a positive int."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"sliding window must be None or a positive int (keys per query), got {window!r}")


def check_sinks(sinks: torch.Tensor | None, query: torch.Tensor) -> None:
    """ValueError unless `sinks` is None or a float tensor of one logit per query head, on the query's device."""
    if sinks is not None and (sinks.shape != (query.shape[1],) or not sinks.is_floating_point()
                              or sinks.device != query.device):
        raise ValueError(f"sinks must be a float tensor of one logit per query head ({query.shape[1]},) on "
                         f"{query.device}, got {sinks.dtype} {tuple(sinks.shape)} on {sinks.device}")


def window_start(position: int, window: int | None) -> int:
    """The first key position a query at `position` sees: position - window + 1 (vLLM's window: flash-attn's
    window_size=(window - 1, 0)), or 0."""
    return 0 if window is None else max(position - window + 1, 0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, first_position: int,
           window: int | None = None, key_position: int = 0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Causal GQA attention in float32: q (n, Hq, D) at positions first_position.. over k, v (L, Hkv, D) at
    positions key_position..; with a sliding window, a query at p sees keys p - window + 1 .. p only (keys before
    the first query's window are never read: vLLM may have freed their pages); sinks (Hq,): one more logit per
    query head in the softmax, with no value (gpt-oss)."""
    start = max(window_start(first_position, window), key_position)
    group = q.shape[1] // k.shape[1]
    k = k[start - key_position:].repeat_interleave(group, dim=1)
    v = v[start - key_position:].repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    q_pos = first_position + torch.arange(q.shape[0], device=q.device)
    k_pos = start + torch.arange(k.shape[0], device=q.device)
    mask = k_pos[None, :] > q_pos[:, None]
    if window is not None:
        mask |= k_pos[None, :] <= q_pos[:, None] - window
    scores = scores.masked_fill(mask, float("-inf"))
    if sinks is None:
        return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)
    sink = sinks.float()[:, None, None].expand(-1, scores.shape[1], 1)
    return torch.einsum("hqk,khd->qhd", torch.cat([scores, sink], -1).softmax(dim=-1)[..., :-1], v)


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
    window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of query (Tq, Hq, head_dim) over the paged cache; returns (Tq, Hq, head_dim) in query's dtype.

    Sequence b owns queries query_start_loc[b]:query_start_loc[b+1], the last tokens of its seq_lens[b]
    tokens (so decode, prefill and chunked prefill are one case). Its context is read from the packed
    cache through block_table[b]; when new_key/new_value (Tq, num_kv_heads, head_dim) are given, the
    sequence's own new tokens use them instead of their packed records. window: a sliding window (see attend);
    pages wholly before a sequence's first query's window are never read (vLLM frees them). sinks (Hq,): attention
    sinks (see attend).
    """
    check_cache(cache, layout)
    check_window(window)
    check_sinks(sinks, query)
    if query.shape[1] % layout.num_kv_heads:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {layout.num_kv_heads} KV heads")
    out = torch.empty_like(query)
    starts, lengths = query_start_loc.tolist(), seq_lens.tolist()
    n_new = [starts[b + 1] - starts[b] for b in range(len(lengths))]
    cached = [length - n if new_key is not None else length for length, n in zip(lengths, n_new)]
    # decode from the earliest window start only (sliding-window layers: pages before it may be freed); it is at or
    # before every sequence's first query, so at or before every sequence's cached tokens' end
    first = min((window_start(length - n, window) for length, n in zip(lengths, n_new)), default=0)
    k_all, v_all = gather(cache, layout, block_table[:len(lengths)], max(cached, default=0), key_params, value_params,
                          first)
    for b, length in enumerate(lengths):
        q = query[starts[b]:starts[b + 1]]
        k, v = k_all[b, :cached[b] - first], v_all[b, :cached[b] - first]
        if new_key is not None:
            k = torch.cat([k, new_key[starts[b]:starts[b + 1]].float()])
            v = torch.cat([v, new_value[starts[b]:starts[b + 1]].float()])
        out[starts[b]:starts[b + 1]] = attend(q, k, v, scale, length - n_new[b], window, first,
                                              None if sinks is None else sinks.cpu()).to(query.dtype)
    return out
