"""The six packed KV-cache formats (byte layouts: docs/formats.md)."""
from .base import KVFormat
from .params import ChannelParams
from .registry import FORMATS, get_format
from .version import FORMAT_VERSION

__all__ = ["FORMATS", "FORMAT_VERSION", "ChannelParams", "KVFormat", "get_format"]
