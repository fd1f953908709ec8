"""The six packed KV-cache formats (byte layouts: docs/formats.md); imported on first use."""
from .._lazy import lazy_exports

_EXPORTS = {"KVFormat": ".base", "ChannelParams": ".params", "FORMATS": ".registry", "get_format": ".registry",
            "FORMAT_VERSION": ".version"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
