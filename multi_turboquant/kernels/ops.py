"""Device dispatch: Triton kernels for CUDA tensors, the torch reference (`naive`) elsewhere."""
from __future__ import annotations

import importlib
import warnings
from functools import cache
from types import ModuleType

import torch

from ..formats.registry import get_format
from . import naive
from .layout import KVCacheLayout


@cache
def _triton(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


def backend_for(t: torch.Tensor, name: str, layout: KVCacheLayout) -> ModuleType:
    """The module implementing op module `name` (triton_store / triton_attention) for tensors like `t`.

    CUDA tensors get the Triton kernels when they serve the layout; otherwise, and off CUDA, the reference.
    """
    if t.is_cuda and (mod := _triton(name)) is not None:
        try:
            mod.check_layout(layout)
            return mod
        except ValueError as e:
            _warn_once(f"multi-turboquant: {e}; using the (slow) torch reference path")
    return naive


@cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def encode(x: torch.Tensor, name: str, params=None, positions: torch.Tensor | None = None) -> torch.Tensor:
    """get_format(name).encode(x, params.at(positions)) for (..., num_kv_heads, head_dim) x: by the store kernel on
    CUDA where it serves the shape (same bytes, one launch instead of thousands of small torch ops), else the
    reference. positions (x's leading dims) are needed by a position_offset only."""
    if x.dim() >= 2:
        layout = KVCacheLayout(name, name, x.shape[-1], x.shape[-2], 1)
        mod = backend_for(x, "triton_store", layout)
        if mod is not naive:
            return mod.encode(x, name, params, positions)
    if params is not None and params.positional and positions is not None:
        params = params.at(positions)
    return get_format(name).encode(x, params)


def store(key, value, cache, slot_mapping, layout, key_params=None, value_params=None, positions=None) -> None:
    """See naive.store."""
    backend_for(cache, "triton_store", layout).store(key, value, cache, slot_mapping, layout, key_params, value_params,
                                                     positions)


def paged_attention(query, cache, layout, block_table, seq_lens, query_start_loc, scale,
                    key_params=None, value_params=None, **kwargs) -> torch.Tensor:
    """See naive.paged_attention (window and sinks included); keyword extras (e.g. max_seq_len) reach the Triton kernel
    only."""
    mod = backend_for(cache, "triton_attention", layout)
    if mod is naive:
        kwargs = {k: v for k, v in kwargs.items() if k in ("new_key", "new_value", "window", "sinks")}
    return mod.paged_attention(query, cache, layout, block_table, seq_lens, query_start_loc, scale,
                               key_params, value_params, **kwargs)
