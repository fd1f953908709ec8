"""Everything that touches vLLM internals, for the supported versions (0.26.x, 0.27.x) only."""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterable

import torch

SUPPORTED_VERSIONS = ("0.26", "0.27")


class UnsupportedVLLMVersion(ValueError):
    pass


def check_version(version: str) -> None:
    """Raise UnsupportedVLLMVersion unless `version` is a 0.26.x or 0.27.x release."""
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VERSIONS:
        raise UnsupportedVLLMVersion(
            f"multi-turboquant supports vLLM {' and '.join(v + '.x' for v in SUPPORTED_VERSIONS)}; "
            f"this is vLLM {version}. Install a supported vLLM or a newer multi-turboquant.")


def add_cache_dtypes(names: Iterable[str]) -> None:
    """Make vLLM accept `names` as kv_cache_dtype: the CacheDType Literal (shared by the config, the CLI and the
    attention selector), CacheConfig's pydantic validator and the dtype table (stored as raw bytes)."""
    from pydantic.dataclasses import rebuild_dataclass
    from vllm.config import cache
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE

    literal = cache.CacheDType
    literal.__args__ = literal.__args__ + tuple(n for n in names if n not in literal.__args__)
    rebuild_dataclass(cache.CacheConfig, force=True)
    STR_DTYPE_TO_TORCH_DTYPE.update({n: torch.uint8 for n in names})


def accepted_cache_dtypes() -> tuple[str, ...]:
    from vllm.config import cache

    return cache.CacheDType.__args__


def route_attention(backend_qualname: str, check: Callable[[object], None], names: Iterable[str]) -> None:
    """Make the current platform pick `backend_qualname` for layers whose kv_cache_dtype is in `names`.

    `check(selector_config)` runs first and raises for layers the formats cannot serve (MLA, sinks, ...).
    """
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CUSTOM, backend_qualname)
    platform = type(current_platform)
    original = platform.get_attn_backend_cls
    if getattr(original, "_mtq", False):
        return
    names = frozenset(names)

    @functools.wraps(original)
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        if attn_selector_config.kv_cache_dtype in names:
            check(attn_selector_config)
            return backend_qualname
        return original(selected_backend, attn_selector_config, num_heads=num_heads)

    get_attn_backend_cls._mtq = True
    platform.get_attn_backend_cls = classmethod(get_attn_backend_cls)


def hook_attention_layers(names: Iterable[str], kept: Callable[[int, object], bool], make_spec: Callable) -> None:
    """Patch vLLM's Attention layer: layers `kept(index, vllm_config)` keep the model dtype; ours get `make_spec`."""
    from vllm.config import get_current_vllm_config
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.models.utils import extract_layer_index

    if getattr(Attention.__init__, "_mtq", False):
        return
    names = frozenset(names)
    original_init, original_spec = Attention.__init__, Attention.get_kv_cache_spec
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        cache_config = bound.arguments.get("cache_config")
        if cache_config is not None and cache_config.cache_dtype in names:
            try:
                index = extract_layer_index(bound.arguments.get("prefix", ""))
            except (AssertionError, ValueError):
                index = None
            if index is not None and kept(index, get_current_vllm_config()):
                cache_config = copy.copy(cache_config)
                object.__setattr__(cache_config, "cache_dtype", "auto")
                bound.arguments["cache_config"] = cache_config
        original_init(*bound.args, **bound.kwargs)

    def get_kv_cache_spec(self, vllm_config):
        if self.kv_cache_dtype in names and self.attn_type == "decoder":
            return make_spec(self, vllm_config)
        return original_spec(self, vllm_config)

    __init__._mtq = True
    Attention.__init__ = __init__
    Attention.get_kv_cache_spec = get_kv_cache_spec
