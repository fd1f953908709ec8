"""Validation of additional_config["multi_turboquant"]."""
from __future__ import annotations

import pytest

from multi_turboquant.vllm.settings import Settings


def test_defaults_and_overrides(tmp_path):
    s = Settings.from_config("isoquant4", {})
    assert (s.key_format, s.value_format, s.keep_layers, s.calibration, s.auto_calibration) == \
        ("isoquant4", "isoquant4", frozenset(), None, True)
    cal = tmp_path / "turboquant_kv.json"
    cal.write_text("{}")
    s = Settings.from_config("turboquant35", {"multi_turboquant": {"value_format": "planarquant3",
                                                                    "keep_layers": [0, 29], "calibration": str(cal)}})
    assert (s.value_format, s.keep_layers, s.calibration, s.auto_calibration) == \
        ("planarquant3", frozenset({0, 29}), cal, False)


@pytest.mark.parametrize("value, auto", [("auto", True), ("none", False)])
def test_calibration_auto_and_none(value, auto):
    s = Settings.from_config("isoquant4", {"multi_turboquant": {"calibration": value}})
    assert (s.calibration, s.auto_calibration) == (None, auto)


@pytest.mark.parametrize("raw, match", [
    ({"value_fmt": "isoquant3"}, "unknown keys"),
    ({"value_format": "isoquant5"}, "isoquant5"),
    ({"keep_layers": "0,1"}, "keep_layers"),
    ({"keep_layers": [-1]}, "keep_layers"),
    ({"calibration": "/nonexistent/cal.json"}, "does not exist"),
    ({"calibration": None}, "calibration must be a file path, 'auto' or 'none', got None"),
    ({"calibration": 1}, "calibration must be a file path"),
    ("isoquant3", "must be a dict"),
])
def test_bad_settings_are_named(raw, match):
    with pytest.raises(ValueError, match=match):
        Settings.from_config("isoquant4", {"multi_turboquant": raw})


def test_unknown_key_format():
    with pytest.raises(ValueError, match="unknown KV-cache format"):
        Settings.from_config("fp8", {})
