"""Automatic calibration: the cache key, the on-disk cache, the plugin's once-per-process use, a real run."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from multi_turboquant.eval import autocal
from multi_turboquant.formats.calibration import load_calibration, save_calibration
from multi_turboquant.formats.params import ChannelParams
from multi_turboquant.vllm import state


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Iterator[Path]:
    """A fresh cache folder (MTQ_CACHE_DIR) and no memoized calibration in the plugin state."""
    monkeypatch.setenv("MTQ_CACHE_DIR", str(tmp_path / "cache"))
    state._auto_calibration.cache_clear()
    yield tmp_path / "cache"
    state._auto_calibration.cache_clear()


def fake_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def write_calibration(path: Path, layers: int = 4, heads: int = 2, head_dim: int = 64) -> None:
    params = [(ChannelParams(offset=torch.randn(heads, head_dim)), None) for _ in range(layers)]
    save_calibration(path, params, head_dim=head_dim, num_kv_heads=heads, model="fake", corpus="random")


def test_the_key_changes_with_the_config_the_weights_and_the_horizon(tmp_path):
    folder = fake_model(tmp_path / "m")
    keys = [autocal.cache_key(folder, 8192), autocal.cache_key(folder, 4096)]
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 5}))
    keys.append(autocal.cache_key(folder, 8192))
    (folder / "model.safetensors").write_bytes(b"other weights")
    keys.append(autocal.cache_key(folder, 8192))
    os.utime(folder / "model.safetensors", ns=(0, 0))  # same size, another mtime
    keys.append(autocal.cache_key(folder, 8192))
    (folder / "pytorch_model-2.bin").write_bytes(b"")
    keys.append(autocal.cache_key(folder, 8192))
    assert len(set(keys)) == len(keys)
    assert autocal.cache_key(folder, 8192) == keys[-1]  # and it is stable


def test_the_second_call_reads_the_cache(tmp_path, cache, monkeypatch):
    folder, calls, lines = fake_model(tmp_path / "m"), [], []

    def compute(model: Path, horizon: int, out: Path, log=None) -> None:
        calls.append((model, horizon))
        write_calibration(out)

    monkeypatch.setattr(autocal, "compute", compute)
    first = autocal.auto_calibration(folder, 8192, lines.append)
    assert autocal.auto_calibration(folder, 8192, lines.append) == first
    assert calls == [(folder.resolve(), 8192)]
    assert first.parent == cache / "calibration" and sorted(first.parent.iterdir()) == [first]  # no temp file left
    assert "first start only" in lines[0] and str(first) in lines[1] and len(lines) == 2
    autocal.auto_calibration(folder, 4096, lines.append)
    assert len(calls) == 2


def test_a_failed_computation_leaves_nothing(tmp_path, cache, monkeypatch):
    def compute(model: Path, horizon: int, out: Path, log=None) -> None:
        out.write_text("half")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(autocal, "compute", compute)
    with pytest.raises(RuntimeError):
        autocal.auto_calibration(fake_model(tmp_path / "m"), 8192, print)
    assert list((cache / "calibration").iterdir()) == []


@pytest.mark.parametrize("model", ["missing", "empty", "no-such-org/no-such-model"])
def test_not_a_model_folder(tmp_path, model):
    if model == "empty":
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.json").write_text("{}")  # no weights
    where = model if "/" in model else str(tmp_path / model)
    with pytest.raises(ValueError, match=r'is not a local Hugging Face model folder .*"calibration": "none"'):
        autocal.auto_calibration(where, 8192)


def test_the_plugin_calibrates_once_per_process_and_only_with_a_model(tmp_path, monkeypatch):
    calls = []

    def auto_calibration(model: str, horizon: int) -> Path:
        calls.append((model, horizon))
        write_calibration(tmp_path / "auto.json")
        return tmp_path / "auto.json"

    monkeypatch.setattr(autocal, "auto_calibration", auto_calibration)
    for _ in range(3):  # vLLM activates once per layer
        assert state.activate("isoquant4", {}, (4, 2, 64), "m", 4096).calibration == tmp_path / "auto.json"
    assert calls == [("m", 4096)]
    assert state.channel_params("model.layers.1.self_attn.attn")[0] is not None
    with pytest.raises(ValueError, match="this model has 30 x 2 of 64"):
        state.activate("isoquant4", {}, (30, 2, 64), "m", 4096)
    assert state.activate("isoquant4", {}).calibration is None  # no model: no calibration
    off = {"multi_turboquant": {"calibration": "none"}}
    assert state.activate("isoquant4", off, (4, 2, 64), "other", 4096).calibration is None
    assert calls == [("m", 4096)]


def test_a_real_calibration_of_a_tiny_model(tiny_head128, cache, tmp_path):
    lines, default = [], torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # as vLLM calls it: while it builds its model in the model's dtype
    try:
        path = autocal.auto_calibration(tiny_head128, 4096, lines.append)
        assert torch.get_default_dtype() == torch.bfloat16
    finally:
        torch.set_default_dtype(default)
    autocal.compute(tiny_head128, 4096, tmp_path / "direct.json")
    cal, direct = load_calibration(path), load_calibration(tmp_path / "direct.json")
    assert all(torch.equal(a[0].scale, b[0].scale) for a, b in zip(cal.layers, direct.layers))
    assert (cal.num_layers, cal.num_kv_heads, cal.head_dim) == (2, 1, 128)
    assert cal.layer(0)[0].outliers.shape == (1, 32) and cal.layer(0)[0].centroid is not None
    assert "positions 0-4095" in cal.corpus and "CPython" in cal.corpus
    assert autocal.auto_calibration(tiny_head128, 4096, lines.append) == path and len(lines) == 2


def test_a_model_with_a_rope_per_layer_type_is_calibrated_without_position_offsets(tiny_gemma3, cache):
    # Gemma 3: local and global RoPE bases; the file holds one RoPE, so key statistics stay as observed
    lines: list[str] = []
    cal = load_calibration(autocal.auto_calibration(tiny_gemma3, 4096, lines.append))
    assert (cal.num_layers, cal.num_kv_heads, cal.head_dim) == (2, 1, 64)
    assert cal.rope is None and not any(key.positional for key, _ in cal.layers)
    assert "as observed" in cal.corpus and "differs by layer type" in cal.corpus
    assert any("local and global RoPE bases" in line for line in lines)
