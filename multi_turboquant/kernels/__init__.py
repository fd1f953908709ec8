"""Paged KV-cache ops over the packed formats: torch reference (`naive`) and Triton kernels."""
from .._lazy import lazy_exports

_EXPORTS = {"KVCacheLayout": ".layout", "naive": ".naive"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
