"""The six formats by their vLLM `kv_cache_dtype` names."""
from __future__ import annotations

from .base import KVFormat
from .blockquant import IsoQuant, PlanarQuant
from .turboquant import TurboQuant

FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in (TurboQuant(1), TurboQuant(2), IsoQuant(3), IsoQuant(4), PlanarQuant(3), PlanarQuant(4))
}


def get_format(name: str) -> KVFormat:
    """The format called `name` (e.g. "isoquant3"); ValueError listing the known names otherwise."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown KV-cache format {name!r}; known: {', '.join(FORMATS)}") from None
