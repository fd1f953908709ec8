"""Per-engine plugin settings, read from vLLM's `additional_config["multi_turboquant"]`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..formats.registry import FORMATS, get_format

CONFIG_KEY = "multi_turboquant"
KNOWN_KEYS = ("value_format", "keep_layers", "calibration", "prefill")
AUTO, NONE = "auto", "none"  # the `calibration` values that are not a file
FLASH, PACKED = "flash", "packed"  # the `prefill` values (docs/vllm.md)


@dataclass(frozen=True)
class Settings:
    """key_format: the kv_cache_dtype; value_format: defaults to it; keep_layers: layer indices in the model dtype;
    calibration: the calibration file, if any; auto_calibration: without a file, compute one for the model (once,
    cached on disk); prefill: FLASH (prefill rows through vLLM's FlashAttention over K/V decoded from the packed cache,
    where it is available) or PACKED (every row through the packed-cache kernel)."""

    key_format: str
    value_format: str
    keep_layers: frozenset[int] = frozenset()
    calibration: Path | None = None
    auto_calibration: bool = False
    prefill: str = FLASH

    @classmethod
    def from_config(cls, cache_dtype: str, additional_config: Any) -> "Settings":
        """Validate `additional_config["multi_turboquant"]` (may be absent) for kv_cache_dtype `cache_dtype`."""
        raw = (additional_config or {}).get(CONFIG_KEY, {}) if isinstance(additional_config, dict) else {}
        if not isinstance(raw, dict):
            raise ValueError(f"additional_config[{CONFIG_KEY!r}] must be a dict, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(KNOWN_KEYS))
        if unknown:
            raise ValueError(f"additional_config[{CONFIG_KEY!r}]: unknown keys {unknown}; known: {list(KNOWN_KEYS)}")
        get_format(cache_dtype)
        value_format = raw.get("value_format", cache_dtype)
        if value_format not in FORMATS:
            raise ValueError(f"value_format {value_format!r} is not one of {', '.join(FORMATS)}")
        keep = raw.get("keep_layers", [])
        if not isinstance(keep, (list, tuple)) or not all(isinstance(i, int) and i >= 0 for i in keep):
            raise ValueError(f"keep_layers must be a list of non-negative layer indices, got {keep!r}")
        prefill = raw.get("prefill", FLASH)
        if prefill not in (FLASH, PACKED):
            raise ValueError(f"prefill must be {FLASH!r} or {PACKED!r}, got {prefill!r}")
        calibration = raw.get("calibration", AUTO)
        if calibration in (AUTO, NONE):
            return cls(cache_dtype, value_format, frozenset(keep), None, calibration == AUTO, prefill)
        return cls(cache_dtype, value_format, frozenset(keep), _calibration_file(calibration), prefill=prefill)


def _calibration_file(value: Any) -> Path:
    """The existing file `value` names; ValueError otherwise."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"calibration must be a file path, {AUTO!r} or {NONE!r}, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"calibration file {str(path)!r} does not exist (or use {AUTO!r} or {NONE!r})")
    return path
