"""`mtq load`: prints throughput, verifies against safe_open, and fails cleanly on bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multi_turboquant.cli import main

st = pytest.importorskip("safetensors.torch")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.safetensors"
    st.save_file({"a": torch.randn(64, 32).bfloat16(), "b": torch.arange(10)}, str(path))
    return path


def test_load_reports_throughput(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", str(model_file), "--chunk-mib", "1", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "2 tensors in 1 file(s), 4176 bytes" in out and "GB/s" in out
    assert "verify: 2/2 tensors match" in out


def test_load_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    assert main(["load", str(bad)]) == 2
    assert "mtq load: error:" in capsys.readouterr().err


def test_load_rejects_zero_chunk(model_file: Path) -> None:
    assert main(["load", str(model_file), "--chunk-mib", "0"]) == 2


def test_verify_reports_mismatch(model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from multi_turboquant.loader import weights

    real = weights.iter_files

    def corrupted(*args: object, **kwargs: object):  # flips one tensor after loading
        for name, tensor in real(*args, **kwargs):
            yield name, tensor + 1 if name == "b" else tensor

    monkeypatch.setattr(weights, "iter_files", corrupted)
    assert main(["load", str(model_file), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "mismatch: m.safetensors: b" in captured.err and "verify: 1/2" in captured.out


def test_bad_device(model_file: Path) -> None:
    assert main(["load", str(model_file), "--device", "nonsense"]) == 2
