"""The six packed KV-cache formats (byte layouts: docs/formats.md); imported on first use."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"KVFormat": ".base", "ChannelParams": ".params", "FORMATS": ".registry", "get_format": ".registry",
            "FORMAT_VERSION": ".version"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
