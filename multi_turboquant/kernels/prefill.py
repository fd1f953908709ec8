"""Prefill through a dense attention kernel (FlashAttention in vLLM) over K/V decoded from the packed cache.

A prefill chunk of q tokens attends to up to seq_len keys: q x seq_len dot products per head, where decode has one
row. Decoding the chunk's context once (seq_len records per KV head; triton_dequant on CUDA) and handing it to a
tensor-core attention kernel costs far less than dequantizing inside the attention loop, as `triton_attention`
does. Every key and value still comes from the packed records, the chunk's own included (it was stored first), so
the result is the packed kernel's up to rounding and quality numbers keep measuring the packed cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

import torch
import torch.nn.functional as F

from ..formats.params import ChannelParams
from . import naive, ops
from .layout import KVCacheLayout

# decoded tokens per gather call or launch: bounds the decoders' float32 temporaries
GATHER_TOKENS = 1 << 16


class VarlenAttention(Protocol):
    """Causal attention over packed variable-length sequences, FlashAttention's varlen signature: sequence b has
    queries cu_seqlens_q[b]:cu_seqlens_q[b+1], the last of its keys cu_seqlens_k[b]:cu_seqlens_k[b+1]."""

    def __call__(self, *, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                 cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
                 causal: bool) -> torch.Tensor: ...


def sdpa_varlen(*, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
                causal: bool) -> torch.Tensor:
    """VarlenAttention by PyTorch's SDPA, one sequence at a time (queries aligned to the keys' end, as in
    FlashAttention): the stand-in where vLLM's FlashAttention is absent, and the tests' reference."""
    out = torch.empty_like(q)
    group = q.shape[1] // k.shape[1]
    qs, ks = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(qs) - 1):
        qb, kb, vb = (t.transpose(0, 1) for t in (q[qs[b]:qs[b + 1]], k[ks[b]:ks[b + 1]], v[ks[b]:ks[b + 1]]))
        kb, vb = kb.repeat_interleave(group, 0), vb.repeat_interleave(group, 0)
        n_q, n_k = qb.shape[1], kb.shape[1]
        mask = None
        if causal:
            keys, queries = torch.arange(n_k, device=q.device), torch.arange(n_k - n_q, n_k, device=q.device)
            mask = keys[None, :] <= queries[:, None]
        out[qs[b]:qs[b + 1]] = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask,
                                                               scale=softmax_scale).transpose(0, 1)
    return out


def decoder(cache: torch.Tensor, layout: KVCacheLayout):
    """decode_sequences for this cache: the Triton decoder (triton_dequant) on CUDA where it serves the layout, else
    the reference below."""
    mod = ops.backend_for(cache, "triton_dequant", layout)
    return decode_sequences if mod is naive else mod.decode_sequences


def segments(lengths: list[int], limit: int) -> list[list[tuple[int, int, int]]]:
    """Rows' tokens 0..lengths[b]-1 as (row, first token, tokens) segments in groups of at most `limit` tokens (a
    longer row is cut), in order."""
    groups, group, size = [], [], 0
    for row, n in enumerate(lengths):
        for start in range(0, n, limit):
            take = min(limit, n - start)
            if size + take > limit:
                groups.append(group)
                group, size = [], 0
            group.append((row, start, take))
            size += take
    return groups + [group] if group else groups


@dataclass
class Plan:
    """A prefill batch's geometry as the decoders and the attention read it, on the device: built once per engine
    step and shared by every layer (no host work or copies per layer)."""

    block_table: torch.Tensor  # the rows' block table, 16-byte aligned (Triton compiles per pointer alignment)
    lengths: list[int]  # tokens to decode per row
    groups: list[list[tuple[int, int, int]]]  # segments(lengths, GATHER_TOKENS)
    seg: list[torch.Tensor]  # per group (segments, 4) int32: row, first token, tokens, output row
    cu_seqlens_k: torch.Tensor  # int32 (rows + 1,)

    @classmethod
    def build(cls, block_table: torch.Tensor, lengths: list[int]) -> Plan:
        device = block_table.device
        if block_table.data_ptr() % 16:  # a row slice
            block_table = block_table.clone()
        groups = segments(lengths, GATHER_TOKENS)
        seg = []
        for group in groups:
            outs = accumulate((n for _, _, n in group), initial=0)
            seg.append(torch.tensor([(row, start, n, out) for (row, start, n), out in zip(group, outs)],
                                    dtype=torch.int32).to(device, non_blocking=True))
        cu_k = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return cls(block_table, lengths, groups, seg, cu_k.to(device, non_blocking=True))

    def check(self, layout: KVCacheLayout) -> None:
        """ValueError unless every row's tokens fit its block-table row (the decoders read pages through it)."""
        room = self.block_table.shape[-1] * layout.block_size
        if len(self.lengths) > self.block_table.shape[0] or any(not 0 <= n <= room for n in self.lengths):
            raise ValueError(f"prefill: sequence lengths {self.lengths} do not fit a block table of "
                             f"{tuple(self.block_table.shape)} pages of {layout.block_size} tokens")


def decode_sequences(cache: torch.Tensor, layout: KVCacheLayout, plan: Plan, key_params: ChannelParams | None,
                     value_params: ChannelParams | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of tokens 0..lengths[b]-1 of each row b of the plan's block table, concatenated: (sum(lengths),
    heads, head_dim) in dtype. The reference: one naive.gather per segment of at most GATHER_TOKENS tokens."""
    plan.check(layout)
    keys, values = [], []
    block_table = plan.block_table
    for group in plan.groups:
        for row, start, n in group:
            k, v = naive.gather(cache, layout, block_table[row:row + 1], start + n, key_params, value_params, start)
            keys.append(k[0].to(dtype))
            values.append(v[0].to(dtype))
    return torch.cat(keys), torch.cat(values)


def prefill(query: torch.Tensor, cache: torch.Tensor, layout: KVCacheLayout, block_table: torch.Tensor,
            seq_lens: list[int], query_start_loc: list[int], scale: float, key_params: ChannelParams | None = None,
            value_params: ChannelParams | None = None, attention: VarlenAttention = sdpa_varlen,
            plan: Plan | None = None, cu_seqlens_q: torch.Tensor | None = None) -> torch.Tensor:
    """naive.paged_attention for a batch whose sequence lengths and query starts are known on the host (no window,
    no sinks): each sequence's context is decoded from its pages, then `attention` runs over all of them at once.
    plan (of block_table and seq_lens) and cu_seqlens_q (query_start_loc - query_start_loc[0], int32, on the
    device): a step's own, shared by its layers; built here when absent."""
    naive.check_cache(cache, layout)
    if len(query_start_loc) != len(seq_lens) + 1 or any(
            n < q1 - q0 or q1 < q0 for n, q0, q1 in zip(seq_lens, query_start_loc, query_start_loc[1:])):
        raise ValueError(f"prefill: seq_lens {seq_lens} and query_start_loc {query_start_loc} do not fit together")
    plan = plan or Plan.build(block_table, seq_lens)
    if cu_seqlens_q is None:
        cu_seqlens_q = query_start_loc_tensor(query_start_loc, query.device)
    k, v = decoder(cache, layout)(cache, layout, plan, key_params, value_params, query.dtype)
    q = query[query_start_loc[0]:query_start_loc[-1]]
    return attention(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=plan.cu_seqlens_k,
                     max_seqlen_q=max(b - a for a, b in zip(query_start_loc, query_start_loc[1:])),
                     max_seqlen_k=max(seq_lens), softmax_scale=scale, causal=True)


def query_start_loc_tensor(query_start_loc: list[int], device: torch.device) -> torch.Tensor:
    """The rows' query starts relative to the first, int32 on `device`: FlashAttention's cu_seqlens_q."""
    return torch.tensor([x - query_start_loc[0] for x in query_start_loc], dtype=torch.int32).to(
        device, non_blocking=True)

