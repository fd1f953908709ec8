"""multi-turboquant: compressed KV-cache formats for vLLM.

The format API is imported on first use, so `mtq` commands that do not need torch start fast.
"""
from ._lazy import lazy_exports

__all__ = ["FORMATS", "FORMAT_VERSION", "ChannelParams", "KVFormat", "get_format"]
__getattr__ = lazy_exports(__name__, {name: ".formats" for name in __all__})
