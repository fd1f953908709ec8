"""Each plot script of benchmarks/ runs on a small input and writes a non-empty PNG."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quality_row(name, kind, bits, dppl, calibrated=False):
    return {"name": name, "kind": kind, "calibrated": calibrated, "bits": bits, "kv_bytes": 0, "ppl": 0.0,
            "dppl_pct": dppl, "agreement_pct": None, "first_divergence": None}


SMALL_INPUTS = {
    "plot_quality": {"meta": {"title": "test"}, "rows": [
        quality_row("bf16", "baseline", 16.0, 0.0), quality_row("int8 per-token-head", "baseline", 8.5, -0.03),
        quality_row("turboquant_4bit_nc", "peer", 4.375, 9.0), quality_row("isoquant4", "format", 4.25, 20.7),
        quality_row("isoquant4 +calib", "format", 4.25, 5.1, True), quality_row("turboquant25", "format", 3.0, 107.0),
        quality_row("K isoquant4 / V isoquant3 +calib", "pair", 3.75, 12.0, True)]},
    "plot_capacity": {"model": "test", "rows": [
        {"kv_cache_dtype": "auto", "kind": "baseline", "capacity": 1.0, "decode": 1.0, "long_out": 1.0,
         "short_out": 1.0},
        {"kv_cache_dtype": "turboquant_3bit_nc", "kind": "peer", "capacity": 3.17, "decode": 0.49, "long_out": 0.32,
         "short_out": None},
        {"kv_cache_dtype": "isoquant3", "kind": "format", "capacity": 4.92, "decode": 0.77, "long_out": 0.56,
         "short_out": 0.86}]},
}


@pytest.mark.parametrize("name", sorted(SMALL_INPUTS))
def test_plot_script_writes_a_png(name, tmp_path):
    data, png = tmp_path / "in.json", tmp_path / "out.png"
    data.write_text(json.dumps(SMALL_INPUTS[name]))
    assert script(name).main([str(data), str(png)]) == 0
    assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 1000


def test_every_plot_script_is_tested():
    assert {p.stem for p in BENCHMARKS.glob("plot_*.py")} == set(SMALL_INPUTS)


def test_quality_plot_of_the_reference_alone_is_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    from multi_turboquant.eval.plot import plot_dppl
    from multi_turboquant.eval.quality import Result

    bf16 = Result("bf16", "baseline", False, 16.0, 512, 20.0, 0.0, 100.0, 8.0)
    assert plot_dppl([bf16], tmp_path / "q.png") is None and not (tmp_path / "q.png").exists()
    fmt = Result("isoquant4", "format", False, 4.25, 204, 22.0, 10.0, 50.0, 3.0)
    assert plot_dppl([bf16, fmt], tmp_path / "q.png") == tmp_path / "q.png"
