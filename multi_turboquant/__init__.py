"""multi-turboquant: compressed KV-cache formats for vLLM."""
from .formats import FORMAT_VERSION, FORMATS, ChannelParams, KVFormat, get_format

__all__ = ["FORMATS", "FORMAT_VERSION", "ChannelParams", "KVFormat", "get_format"]
