"""Entry point (`vllm.general_plugins`): registers the six formats with vLLM when vLLM loads its plugins."""
from __future__ import annotations

import torch

from ..formats.registry import FORMATS
from . import compat, state

BACKEND = "multi_turboquant.vllm.backend.MTQAttentionBackend"


def register() -> None:
    """Called by vLLM in every process; safe to call repeatedly."""
    import vllm

    compat.check_version(vllm.__version__)
    compat.add_cache_dtypes(FORMATS)
    compat.route_attention(BACKEND, _check_layer, FORMATS)
    compat.hook_attention_layers(FORMATS, _kept, _packed_spec)


def registered_kv_cache_dtypes() -> list[str]:
    """The names of ours vLLM accepts now (after register())."""
    return [n for n in compat.accepted_cache_dtypes() if n in FORMATS]


def _check_layer(cfg) -> None:
    """Refuse, at engine build, layers the formats cannot serve."""
    name = cfg.kv_cache_dtype
    refusals = {
        "MLA attention": cfg.use_mla,
        "sparse attention": getattr(cfg, "use_sparse", False),
        "attention sinks": cfg.has_sink,
        "sliding-window attention": getattr(cfg, "has_sliding_window", False),
        f"attention type {cfg.attn_type}": cfg.attn_type not in (None, "decoder"),
    }
    refused = [what for what, hit in refusals.items() if hit]
    if refused:
        raise ValueError(f"kv_cache_dtype={name!r} (multi-turboquant) does not support {', '.join(refused)} "
                         "in this model; use another kv_cache_dtype")
    try:
        FORMATS[name].check_head_dim(cfg.head_size)
    except ValueError as e:
        raise ValueError(f"kv_cache_dtype={name!r} does not support head_size {cfg.head_size} ({e})") from None


def _activate(vllm_config) -> state.Settings:
    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    dims = (model.get_num_layers(parallel), model.get_num_kv_heads(parallel), model.get_head_size())
    return state.activate(vllm_config.cache_config.cache_dtype, vllm_config.additional_config, dims)


def _kept(index: int, vllm_config) -> bool:
    return index in _activate(vllm_config).keep_layers


def _packed_spec(layer, vllm_config):
    from .spec import PackedKVSpec

    _activate(vllm_config)
    block_size = vllm_config.cache_config.block_size
    return PackedKVSpec(
        block_size=block_size,
        num_kv_heads=layer.num_kv_heads,
        head_size=layer.head_size,
        head_size_v=layer.head_size_v,
        dtype=torch.uint8,
        slot_bytes=state.layout(layer.head_size, layer.num_kv_heads, block_size).slot_bytes,
    )
