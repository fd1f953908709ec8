"""The one error type the loader raises for bad checkpoints."""
from __future__ import annotations


class SafetensorsError(ValueError):
    """A safetensors file or checkpoint is malformed, truncated, unsupported or missing."""
