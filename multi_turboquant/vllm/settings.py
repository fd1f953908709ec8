"""Per-engine plugin settings, read from vLLM's `additional_config["multi_turboquant"]`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..formats.registry import FORMATS, get_format

CONFIG_KEY = "multi_turboquant"
KNOWN_KEYS = ("value_format", "keep_layers", "calibration")


@dataclass(frozen=True)
class Settings:
    """key_format: the kv_cache_dtype; value_format: defaults to it; keep_layers: layer indices in the model dtype."""

    key_format: str
    value_format: str
    keep_layers: frozenset[int] = frozenset()
    calibration: Path | None = None

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
        calibration = raw.get("calibration")
        if calibration is not None:
            calibration = Path(calibration).expanduser()
            if not calibration.is_file():
                raise ValueError(f"calibration file {str(calibration)!r} does not exist")
        return cls(cache_dtype, value_format, frozenset(keep), calibration)
