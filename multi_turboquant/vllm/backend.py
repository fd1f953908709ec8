"""vLLM attention backend over the packed cache: backend (shapes), metadata builder, impl."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from ..formats.base import HEAD_DIM_MULTIPLE, MAX_HEAD_DIM, MIN_HEAD_DIM
from ..formats.params import ChannelParams
from ..formats.registry import FORMATS
from ..kernels import ops
from ..kernels import prefill as dense_prefill
from ..kernels.layout import KVCacheLayout
from ..kernels.naive import token_positions
from . import compat, state
from .settings import FLASH

HEAD_SIZES = list(range(MIN_HEAD_DIM, MAX_HEAD_DIM + 1, HEAD_DIM_MULTIPLE))
# Prefill rows go to FlashAttention over decoded K/V once a layer's packed-kernel work (query-key pairs x query heads
# x head_dim) passes this: where the two paths cross on the H200 (BENCHMARKS.md "Prefill through FlashAttention",
# `benchmarks/prefill.py --sweep`: the flash path costs ~0.4 ms at least, the packed kernel 0.1-0.6 ns per unit).
# MTQ_FLASH_MIN_WORK overrides it.
FLASH_MIN_WORK = int(os.environ.get("MTQ_FLASH_MIN_WORK", 1 << 30))


class MTQAttentionBackend(AttentionBackend):
    """Stores K and V as packed records (docs/formats.md) and attends straight from them."""

    accept_output_buffer: bool = True
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[str]] = list(FORMATS)

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # vLLM's slot for third-party backends (registered by the plugin)

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: object = None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]  # vLLM 0.31+ passes the layer's spec

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return HEAD_SIZES

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER

    @staticmethod
    def get_impl_cls() -> type["MTQAttentionImpl"]:
        return MTQAttentionImpl

    @staticmethod
    def get_builder_cls() -> type["MTQMetadataBuilder"]:
        return MTQMetadataBuilder

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple | None:
        return compat.head_major_layouts()

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                           cache_dtype_str: str = "auto") -> tuple[int, ...]:
        """The layer's cache shape (vLLM < 0.29 asks; later releases take it from the spec)."""
        return state.layout(head_size, num_kv_heads, block_size).shape(num_blocks)


@dataclass
class MTQMetadata:
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    positions: torch.Tensor  # each scheduled token's position in its sequence (for position-dependent key offsets)
    prefill: PrefillSplit | None = None  # set where the prefill rows go to FlashAttention (settings.prefill "flash")


@dataclass
class PrefillSplit:
    """A batch ordered decodes first (rows with one query token), then prefill rows, with the prefill rows' lengths
    on the host (no device sync)."""

    num_decodes: int
    num_decode_tokens: int
    seq_lens: list[int]  # of the prefill rows
    query_start_loc: list[int]  # of the prefill rows, into the batch's tokens (starts at num_decode_tokens)
    _device: tuple[dense_prefill.Plan, torch.Tensor] | None = field(default=None, init=False, repr=False,
                                                                     compare=False)

    def device_plan(self, block_table: torch.Tensor) -> tuple[dense_prefill.Plan, torch.Tensor]:
        """The prefill rows' decode plan and FlashAttention's cu_seqlens_q on the device, built by the first layer
        that needs them and shared by the step's other layers (the metadata is the group's)."""
        if self._device is None:
            self._device = (dense_prefill.Plan.build(block_table[self.num_decodes:], self.seq_lens),
                            dense_prefill.query_start_loc_tensor(self.query_start_loc, block_table.device))
        return self._device

    @property
    def pairs(self) -> int:
        """Query-key pairs of the prefill rows: the packed kernel's work per head dimension."""
        starts = self.query_start_loc
        return sum((b - a) * n for a, b, n in zip(starts, starts[1:], self.seq_lens))


def prefill_split(m: CommonAttentionMetadata) -> PrefillSplit | None:
    """The split of a batch with prefill rows, or None (decode only, not ordered decodes first, or no host copy
    of the sequence lengths)."""
    if m.max_query_len <= 1:
        return None
    seq_lens = compat.host_seq_lens(m)
    if seq_lens is None:
        return None
    starts = m.query_start_loc_cpu[:m.num_reqs + 1].tolist()
    lens = [b - a for a, b in zip(starts, starts[1:])]
    num_decodes = next((i for i, n in enumerate(lens) if n > 1), len(lens))
    if any(n <= 1 for n in lens[num_decodes:]):
        return None
    return PrefillSplit(num_decodes, starts[num_decodes], seq_lens[num_decodes:m.num_reqs].tolist(),
                        starts[num_decodes:])


class MTQMetadataBuilder(AttentionMetadataBuilder[MTQMetadata]):
    # Decode batches replay full CUDA graphs (the kernels never sync with the host); without this vLLM runs
    # attention eagerly between graph pieces, where Python launch overhead dominates a decode step.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._split = torch.device(device).type == "cuda" and state.settings().prefill == FLASH
        if self._split:
            self.reorder_batch_threshold = 1  # vLLM orders a batch decodes first
        sched = vllm_config.scheduler_config
        # one buffer for every step (a replayed CUDA graph reads the address it was captured with), passed whole: a
        # step padded for a CUDA graph stores more rows (padding, slot -1) than it schedules
        self._positions = torch.zeros(max(sched.max_num_batched_tokens, sched.max_num_seqs), dtype=torch.int64,
                                      device=device)

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata) -> MTQMetadata:
        """A captured graph serves every later context length: split the KV for the longest the model allows."""
        meta = self.build(0, common_attn_metadata)
        meta.max_seq_len = max(meta.max_seq_len, self.vllm_config.model_config.max_model_len)
        return meta

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> MTQMetadata:
        m = common_attn_metadata
        positions = self._positions
        positions[:m.num_actual_tokens].copy_(token_positions(m.seq_lens, m.query_start_loc, m.num_actual_tokens))
        return MTQMetadata(
            num_actual_tokens=m.num_actual_tokens,
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            query_start_loc=m.query_start_loc,
            seq_lens=m.seq_lens,
            block_table=m.block_table_tensor,
            slot_mapping=m.slot_mapping,
            positions=positions,
            prefill=prefill_split(m) if self._split else None,
        )


def _engine_setting(section: str, name: str) -> int | None:
    """A setting of the engine's config (e.g. model_config.max_model_len) while vLLM builds the model (None outside
    an engine)."""
    from vllm.config import get_current_vllm_config

    try:
        config = getattr(get_current_vllm_config(), section, None)
    except AssertionError:  # newer vLLMs assert when no config is set
        return None
    return getattr(config, name, None)


def _positions(layer_name: str, n: int, device: torch.device) -> torch.Tensor:
    """The first n stored rows' positions, from this step's metadata (vLLM's forward context); zeros in a dummy
    run without metadata (profiling, warm-up), whose rows are never read."""
    from vllm.forward_context import get_forward_context

    meta = get_forward_context().attn_metadata
    meta = meta.get(layer_name) if isinstance(meta, dict) else meta
    if meta is None:
        return torch.zeros(n, dtype=torch.int64, device=device)
    if meta.positions.shape[0] < n:
        raise RuntimeError(f"multi-turboquant: no token positions for layer {layer_name} in this step's metadata")
    return meta.positions[:n]


class MTQAttentionImpl(AttentionImpl[MTQMetadata]):
    """Prefill and decode both attend over the packed cache, so chunking and prefix hits do not change results."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int | None = None,
                 alibi_slopes: list[float] | None = None, sliding_window: int | None = None,
                 kv_cache_dtype: str = "auto", logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name: str | None = None,
                 **kwargs) -> None:
        unsupported = {
            "ALiBi": alibi_slopes is not None,
            "logits soft-capping": bool(logits_soft_cap),
            "cross-layer KV sharing": kv_sharing_target_layer_name is not None,
            f"attention type {attn_type}": attn_type != AttentionType.DECODER,
        }
        refused = [name for name, hit in unsupported.items() if hit]
        if refused:
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} (multi-turboquant) does not support {', '.join(refused)}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window  # a query at p sees keys p - sliding_window + 1 .. p, as in vLLM
        self.sinks = kwargs.get("sinks")  # (num_heads,) learned logits in each head's softmax (gpt-oss)
        if self.sinks is not None and tuple(self.sinks.shape) != (num_heads,):
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} (multi-turboquant): attention sinks must hold one "
                             f"logit per query head ({num_heads},), got {tuple(self.sinks.shape)}")
        self.settings = state.settings()
        self._params: tuple[ChannelParams | None, ChannelParams | None] | None = None
        self._flash = None  # vLLM's FlashAttention for prefill rows, where settings and the layer allow it
        if self.settings.prefill == FLASH and sliding_window is None and self.sinks is None and head_size <= 256:
            self._flash = compat.flash_attn_varlen()
        self._max_positions = _engine_setting("model_config", "max_model_len")
        self._block_size = _engine_setting("cache_config", "block_size")
        self._warmed = False

    def _layout(self, kv_cache: torch.Tensor) -> KVCacheLayout:
        return state.layout(self.head_size, self.num_kv_heads, kv_cache.shape[2])

    def _channel_params(self, layer: torch.nn.Module) -> tuple[ChannelParams | None, ChannelParams | None]:
        if self._params is None:
            self._params = state.channel_params(layer.layer_name, self._max_positions)
        return self._params

    def do_kv_cache_update(self, layer: torch.nn.Module, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        n = slot_mapping.shape[0]
        shape = (n, self.num_kv_heads, self.head_size)
        key_params, value_params = self._channel_params(layer)
        positions = None
        if key_params is not None and key_params.positional:
            positions = _positions(layer.layer_name, n, key.device)
        ops.store(key[:n].reshape(shape), value[:n].reshape(shape), kv_cache, slot_mapping,
                  self._layout(kv_cache), key_params, value_params, positions)

    def forward(self, layer: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: MTQMetadata | None, output: torch.Tensor | None = None,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("multi-turboquant: fused output quantization is not supported")
        if attn_metadata is None:  # profiling run: compile this layer's kernels (once) before serving
            if query.is_cuda and not self._warmed and self._block_size:
                self._warm_up(layer, query.dtype, query.device)
            return output
        n = attn_metadata.num_actual_tokens
        key_params, value_params = self._channel_params(layer)
        split = attn_metadata.prefill
        if (split is not None and self._flash is not None and query.dtype in (torch.float16, torch.bfloat16)
                and split.pairs * self.num_heads * self.head_size >= FLASH_MIN_WORK):
            self._forward_split(layer, query, kv_cache, attn_metadata, split, output)
            return output
        kwargs = {"max_query_len": attn_metadata.max_query_len, "max_seq_len": attn_metadata.max_seq_len,
                  "window": self.sliding_window, "sinks": self.sinks}
        target = output[:n]
        if target.is_contiguous() and target.is_cuda:  # the kernels write the output in place
            kwargs["out"] = target.view(n, self.num_heads, self.head_size)
        out = ops.paged_attention(
            query[:n].reshape(n, self.num_heads, self.head_size), kv_cache, self._layout(kv_cache),
            attn_metadata.block_table, attn_metadata.seq_lens, attn_metadata.query_start_loc, self.scale,
            key_params, value_params, **kwargs)
        if out is not kwargs.get("out"):  # the reference path returns a new tensor
            target.copy_(out.reshape(target.shape))
        return output

    def _warm_up(self, layer: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        layout = state.layout(self.head_size, self.num_kv_heads, self._block_size)
        if ops.backend_for(torch.empty(0, device=device), "triton_attention", layout) is not ops.naive:
            from ..kernels import warmup  # Triton: CUDA only

            warmup.warm_up(layout, *self._channel_params(layer), self.num_heads, dtype, device,
                           self.sliding_window, self.sinks, dequant=self._flash is not None)
        self._warmed = True

    def _forward_split(self, layer: torch.nn.Module, query: torch.Tensor, kv_cache: torch.Tensor, meta: MTQMetadata,
                       split: PrefillSplit, output: torch.Tensor) -> None:
        """Decode rows through the packed kernel, prefill rows through FlashAttention over their decoded K/V."""
        d, h, layout = split.num_decode_tokens, self.num_heads, self._layout(kv_cache)
        n = meta.num_actual_tokens
        q = query[:n].reshape(n, h, self.head_size)
        out = output[:n].view(n, h, self.head_size)
        if split.num_decodes:
            key_params, value_params = self._channel_params(layer)
            in_place = {"out": out[:d]} if out.is_cuda else {}  # the kernels write the output in place
            rows = ops.paged_attention(
                q[:d], kv_cache, layout, meta.block_table[:split.num_decodes], meta.seq_lens[:split.num_decodes],
                meta.query_start_loc[:split.num_decodes + 1], self.scale, key_params, value_params, max_query_len=1,
                max_seq_len=meta.max_seq_len, **in_place)
            if not in_place:
                out[:d] = rows
        plan, cu_seqlens_q = split.device_plan(meta.block_table)
        out[d:n] = dense_prefill.prefill(q, kv_cache, layout, plan.block_table, split.seq_lens, split.query_start_loc,
                                         self.scale, *self._channel_params(layer), attention=self._flash, plan=plan,
                                         cu_seqlens_q=cu_seqlens_q)
