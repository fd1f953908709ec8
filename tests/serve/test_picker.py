"""The model picker over fake model folders and a fake terminal."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from multi_turboquant.serve import picker
from multi_turboquant.serve.picker import LocalModel, find_models, pick_model


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """An mtq models folder (one model, one folder without config.json) and a hub cache (three snapshots)."""
    models, hub = tmp_path / "models", tmp_path / "hub"
    model_dir(models / "smollm2-135m-bf16")
    (models / "not-a-model").mkdir()
    model_dir(hub / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "0123456789abcdef")
    model_dir(hub / "models--org--two" / "snapshots" / "aaaaaaaaaaaa")
    model_dir(hub / "models--org--two" / "snapshots" / "bbbbbbbbbbbb")
    (hub / "models--org--empty" / "snapshots" / "cccc").mkdir(parents=True)
    return models, hub


def test_find_models(folders):
    models, hub = folders
    assert [m.name for m in find_models(models, [hub])] == [
        "smollm2-135m-bf16", "HuggingFaceTB/SmolLM2-135M", "org/two@aaaaaaaa", "org/two@bbbbbbbb"]


def test_hub_dirs_from_environment(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    assert picker.hub_dirs() == [(home / "hub").resolve()]


def test_pick_by_number_after_a_wrong_answer():
    models = [LocalModel("a", Path("/a")), LocalModel("b", Path("/b"))]
    out = io.StringIO()
    assert pick_model(models, Terminal("x\n3\n2\n"), out) == models[1]
    text = out.getvalue()
    assert " 1. a  (/a)" in text and " 2. b  (/b)" in text and "'3' is not a number from 1 to 2" in text


def test_end_of_input_is_an_error():
    with pytest.raises(ValueError, match="no model chosen"):
        pick_model([LocalModel("a", Path("/a"))], Terminal(""), io.StringIO())


def test_without_a_terminal_it_asks_for_model():
    with pytest.raises(ValueError, match="stdin is not a terminal.*--model.*/a"):
        pick_model([LocalModel("a", Path("/a"))], io.StringIO("1\n"), io.StringIO())


def test_without_models_it_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MTQ_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=f"no local model folder found in {tmp_path}"):
        pick_model([], Terminal("1\n"), io.StringIO())
