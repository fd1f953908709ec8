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


@pytest.mark.parametrize("load_format, auto_called", [("dummy", False), ("auto", True)])
def test_random_weights_are_not_calibrated(monkeypatch, load_format, auto_called):
    """load_format="dummy" (random weights, no files to read) turns automatic calibration off instead of failing."""
    from types import SimpleNamespace

    from multi_turboquant.vllm import state
    calls = []
    monkeypatch.setattr(state, "_auto_calibration", lambda model, horizon: calls.append(model))
    monkeypatch.setattr(state, "_calibration", lambda path: SimpleNamespace(num_layers=2, num_kv_heads=1, head_dim=64))
    model = SimpleNamespace(model="/some/folder", max_model_len=256, get_num_layers=lambda p: 2,
                            get_total_num_kv_heads=lambda: 1, get_head_size=lambda: 64)
    config = SimpleNamespace(model_config=model, parallel_config=None, cache_config=SimpleNamespace(cache_dtype="isoquant4"),
                             additional_config={}, load_config=SimpleNamespace(load_format=load_format))
    state.activate_engine(config)
    assert calls == (["/some/folder"] if auto_called else [])
