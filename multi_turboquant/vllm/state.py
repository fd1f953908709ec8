"""The engine's active plugin settings in this process (one engine per worker process)."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, wraps
from pathlib import Path

from ..formats.params import ChannelParams
from ..formats.registry import get_format
from ..kernels.layout import KVCacheLayout
from .settings import Settings

_active: Settings | None = None


def _on_cpu(fn):
    """Run fn with the CPU as torch's default device. vLLM builds its model under a default CUDA device; the plugin
    makes its tables (and the automatic calibration) on the CPU and moves each to where it is used."""
    @wraps(fn)
    def run(*args, **kwargs):
        import torch

        with torch.device("cpu"):
            return fn(*args, **kwargs)
    return run


def activate(cache_dtype: str, additional_config: object, model_dims: tuple[int, int, int] | None = None,
             model: str | None = None, max_model_len: int | None = None) -> Settings:
    """Validate and remember the settings of the engine being built; with model_dims (layers, KV heads, head_dim)
    a calibration file is loaded and checked against the model now, at engine build. With the model (its folder)
    and max_model_len, automatic calibration computes or reads the model's cached file; without, it is off."""
    global _active
    _active = Settings.from_config(cache_dtype, additional_config)
    if _active.auto_calibration and model is not None and max_model_len is not None:
        _active = replace(_active, calibration=_auto_calibration(model, max_model_len))
    if _active.calibration is not None and model_dims is not None:
        cal = _calibration(_active.calibration)
        if (cal.num_layers, cal.num_kv_heads, cal.head_dim) != tuple(model_dims):
            raise ValueError(f"calibration {_active.calibration} is for {cal.num_layers} layers x {cal.num_kv_heads} KV "
                             f"heads of head_dim {cal.head_dim}; this model has {model_dims[0]} x {model_dims[1]} of "
                             f"{model_dims[2]}")
    return _active


@lru_cache(maxsize=None)
def _auto_calibration(model: str, max_model_len: int) -> Path:
    """The model's automatic calibration file, once per process (activate runs for every layer)."""
    from ..eval.autocal import auto_calibration

    return auto_calibration(model, horizon=max_model_len)


@_on_cpu
def activate_engine(vllm_config) -> Settings:
    """activate() with the dims, folder and max_model_len of vLLM's model config (none when it has no model)."""
    model, parallel, cache = vllm_config.model_config, vllm_config.parallel_config, vllm_config.cache_config
    if model is None:
        return activate(cache.cache_dtype, vllm_config.additional_config)
    # the calibration covers every KV head; each tensor-parallel rank takes its own (channel_params)
    dims = (model.get_num_layers(parallel), model.get_total_num_kv_heads(), model.get_head_size())
    folder = model.model
    if getattr(getattr(vllm_config, "load_config", None), "load_format", None) == "dummy":
        folder = None  # random weights: there is nothing to calibrate on, so automatic calibration is off
    active = activate(cache.cache_dtype, vllm_config.additional_config, dims, folder, model.max_model_len)
    if active.keep_layers and _mixes_sliding_and_full(model):
        raise ValueError("multi-turboquant: keep_layers is not supported for a model that mixes sliding-window and "
                         "full-attention layers (Gemma 3): vLLM's hybrid KV cache needs one page size in all its "
                         "layer groups, and kept layers' pages are larger than the packed ones; drop keep_layers")
    return active


def _mixes_sliding_and_full(model_config) -> bool:
    """Whether the model's layer types mix sliding-window and other attention (vLLM's hybrid KV-cache groups)."""
    types = set(getattr(getattr(model_config, "hf_text_config", None), "layer_types", None) or ())
    return "sliding_attention" in types and len(types) > 1


def settings() -> Settings:
    """The active settings, read from vLLM's current config on first use."""
    if _active is None:
        from vllm.config import get_current_vllm_config

        return activate_engine(get_current_vllm_config())
    return _active


def layout(head_size: int, num_kv_heads: int, block_size: int) -> KVCacheLayout:
    s = settings()
    return _layout(s.key_format, s.value_format, head_size, num_kv_heads, block_size)


@lru_cache(maxsize=None)
def _layout(key_format: str, value_format: str, head_size: int, num_kv_heads: int, block_size: int) -> KVCacheLayout:
    return KVCacheLayout(key_format, value_format, head_size, num_kv_heads, block_size)


@lru_cache(maxsize=4)
def _calibration(path):
    from ..formats.calibration import load_calibration

    return load_calibration(path)


@_on_cpu
def channel_params(layer_name: str, positions: int | None = None) -> tuple[ChannelParams | None, ChannelParams | None]:
    """Key and value calibration of the layer called `layer_name`, or (None, None) without a calibration file;
    a position-dependent key offset covers `positions` (the engine's max_model_len; default: the file's horizon)."""
    s = settings()
    if s.calibration is None:
        return None, None
    from vllm.model_executor.models.utils import extract_layer_index

    from ..formats.calibration import for_family

    calibration = _calibration(s.calibration)
    index = extract_layer_index(layer_name)
    key, value = calibration.layer(index, positions=positions)  # the key's position table is built once
    key, value = for_family(key, get_format(s.key_format).family), for_family(value, get_format(s.value_format).family)
    heads = rank_heads(calibration.num_kv_heads, *_tensor_parallel())
    return tuple(None if p is None else p.map(lambda t: t[..., heads, :]) for p in (key, value))


def rank_heads(total: int, tp_size: int, rank: int) -> list[int]:
    """The KV heads tensor-parallel rank `rank` of `tp_size` holds, as vLLM splits them: consecutive blocks of
    total / tp_size, or one replicated head (rank // (tp_size / total)) when there are fewer heads than ranks."""
    if total >= tp_size:
        if total % tp_size:
            raise ValueError(f"{total} KV heads do not split over {tp_size} tensor-parallel ranks")
        per = total // tp_size
        return list(range(rank * per, (rank + 1) * per))
    return [rank * total // tp_size]


def _tensor_parallel() -> tuple[int, int]:
    """(world size, rank) of this worker's tensor-parallel group; (1, 0) outside a distributed engine."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1, 0
    return parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
