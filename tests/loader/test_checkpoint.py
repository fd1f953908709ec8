"""Sharded checkpoints: an index's weight_map, or every *.safetensors of a directory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multi_turboquant.loader import SafetensorsError, load_weights, resolve_checkpoint

st = pytest.importorskip("safetensors.torch")

SHARDS = {
    "model-00001-of-00002.safetensors": {"embed": torch.arange(12.0).reshape(3, 4), "l0.w": torch.ones(2, 2).bfloat16()},
    "model-00002-of-00002.safetensors": {"l1.w": torch.full((5,), 7, dtype=torch.int16), "head": torch.eye(3)},
}


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    weight_map = {}
    for fname, tensors in SHARDS.items():
        st.save_file(tensors, str(tmp_path / fname))
        weight_map.update(dict.fromkeys(tensors, fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tmp_path


def _expected() -> dict[str, torch.Tensor]:
    return {k: v for tensors in SHARDS.values() for k, v in tensors.items()}


@pytest.mark.parametrize("via", ["dir", "index", "glob"])
def test_loads_all_shards(sharded: Path, via: str) -> None:
    if via == "glob":
        (sharded / "model.safetensors.index.json").unlink()
    got = load_weights(sharded / "model.safetensors.index.json" if via == "index" else sharded)
    expected = _expected()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_index_lists_files_once_in_order(sharded: Path) -> None:
    ckpt = resolve_checkpoint(sharded)
    assert [p.name for p in ckpt.files] == sorted(SHARDS)
    assert ckpt.weight_map["head"].name == "model-00002-of-00002.safetensors"


def test_index_naming_missing_file(sharded: Path) -> None:
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SafetensorsError, match="index names missing files: .*model-00002-of-00002"):
        resolve_checkpoint(sharded)


def test_index_naming_missing_tensor(sharded: Path) -> None:
    index = sharded / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    obj["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(obj))
    with pytest.raises(SafetensorsError, match="model-00001-of-00002.safetensors: index lists 1 tensors this file lacks: ghost"):
        load_weights(sharded)


@pytest.mark.parametrize("text", ["{not json", '{"weight_map": ["a"]}', "[]"])
def test_bad_index(sharded: Path, text: str) -> None:
    (sharded / "model.safetensors.index.json").write_text(text)
    with pytest.raises(SafetensorsError, match="index"):
        resolve_checkpoint(sharded)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsError, match="holds no"):
        resolve_checkpoint(tmp_path)


@pytest.mark.parametrize("fname", ["../outside.safetensors", "/abs/x.safetensors", "C:\\x.safetensors", "a\\..\\..\\x.safetensors"])
def test_index_cannot_name_files_outside_its_folder(tmp_path: Path, fname: str) -> None:
    """An index is data from the checkpoint's author: it must not make the loader read arbitrary files."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    st.save_file({"w": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))  # exists, so only the check refuses it
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": fname}}))
    with pytest.raises(SafetensorsError, match="index names files outside its folder"):
        resolve_checkpoint(folder)


def test_index_may_name_files_in_subfolders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    st.save_file({"w": torch.zeros(1)}, str(tmp_path / "sub" / "w.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "sub/w.safetensors"}}))
    assert load_weights(tmp_path).keys() == {"w"}
