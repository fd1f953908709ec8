"""multi-turboquant: compressed KV-cache formats for vLLM.

The format API is imported on first use, so `mtq` commands that do not need torch start fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "FORMAT_VERSION", "ChannelParams", "KVFormat", "get_format"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import formats

        return getattr(formats, name)
    raise AttributeError(f"module 'multi_turboquant' has no attribute {name!r}")
