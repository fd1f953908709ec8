"""Baseline codecs and the re-implemented vLLM TurboQuant presets."""
from __future__ import annotations

import math

import pytest
import torch

from multi_turboquant.formats.codebooks import dequantize
from multi_turboquant.eval.codecs import INT4, INT8, fp8_e4m3, format_codec, uniform
from multi_turboquant.eval.presets import PRESETS, hadamard, lloyd_max, mse_key, preset_codecs

D = 64


def _x(n: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, D, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_uniform_levels_and_error_shrink_with_bits():
    x = _x()
    errors = [_rel(uniform(x, b), x) for b in (3, 4, 8)]
    assert errors[0] > errors[1] > 8 * errors[2] > 0
    assert uniform(x, 4).unique(dim=-1).shape[-1] <= 16 * x.shape[0]
    assert (INT8.nbytes(D), INT4.nbytes(D)) == (68, 36)


def test_fp8_per_tensor_scale():
    x = _x() * 1000
    assert 0 < _rel(fp8_e4m3(x), x) < 0.05


def test_lloyd_max_matches_the_gaussian_table():
    """vLLM's solver for N(0, 1/d) gives the N(0, 1) Lloyd-Max levels over sqrt(d) (trapezoid accuracy)."""
    for bits in (3, 4):
        centroids, mids = lloyd_max(D, bits)
        table = dequantize(torch.arange(2**bits).view(1, -1), bits)[0] / math.sqrt(D)
        assert torch.allclose(centroids, table, atol=2e-3 / math.sqrt(D))
        assert torch.allclose(mids, (centroids[1:] + centroids[:-1]) / 2)


def test_lloyd_max_equals_vllm_solver():
    centroids = pytest.importorskip("vllm.model_executor.layers.quantization.turboquant.centroids")
    c, b = centroids.solve_lloyd_max(D, 3)  # pure Python, slow: one case
    mine_c, mine_b = lloyd_max(D, 3)
    assert torch.equal(c, mine_c) and torch.equal(b, mine_b)


def test_preset_bytes_match_vllm_config():
    config = pytest.importorskip("vllm.model_executor.layers.quantization.turboquant.config")
    for name in PRESETS:
        cfg = config.TurboQuantConfig.from_cache_dtype(name, D)
        k, v = preset_codecs(name)
        assert (k.nbytes(D), v.nbytes(D)) == (cfg.key_packed_size, cfg.value_packed_size), name


def test_mse_key_properties():
    h = hadamard(D)
    assert torch.allclose(h @ h, torch.eye(D), atol=1e-6)
    x = _x()
    k4, k3 = mse_key(x, 4, True), mse_key(x, 3, True)
    assert torch.allclose(k4.norm(dim=-1), x.norm(dim=-1), rtol=2e-3)  # norm correction keeps ||k||
    assert 0 < _rel(k4, x) < _rel(k3, x) < 0.3
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        mse_key(torch.randn(4, 48), 4, True)
    with pytest.raises(ValueError, match="unknown vLLM TurboQuant preset"):
        preset_codecs("turboquant_2bit")


def test_format_codec_uses_calibration():
    codec = format_codec("isoquant4")
    x = _x() + torch.linspace(-20, 20, D)  # a large per-channel mean
    from multi_turboquant.formats.params import fit_channel_params
    p = fit_channel_params(x, center=True)
    assert _rel(codec.roundtrip(x, p), x) < 0.5 * _rel(codec.roundtrip(x, None), x)
    assert codec.nbytes(D) == 34


def test_mse_only_turboquant_prototype_beats_qjl_at_equal_bytes():
    from multi_turboquant.eval.variants import mse_turboquant, variant_schemes

    x = _x(256)
    for name in ("turboquant25", "turboquant35"):
        proto, fmt = mse_turboquant(name), format_codec(name)
        assert proto.nbytes(D) == fmt.nbytes(D)
        assert 0 < _rel(proto.roundtrip(x, None), x) ** 2 < 0.9 * _rel(fmt.roundtrip(x, None), x) ** 2  # MSE
    rows = variant_schemes(["isoquant4", "turboquant35"])
    assert [r.name for r in rows] == ["turboquant35-mse +calib", "isoquant4 +calib +sink", "turboquant35 +calib +sink",
                                      "isoquant4 +calib K only", "isoquant4 +calib V only",
                                      "turboquant35 +calib K only", "turboquant35 +calib V only"]
    assert all(r.calibrated for r in rows) and [r.exact_prefix for r in rows] == [0, 1, 1, 0, 0, 0, 0]
    assert rows[3].value.name == "bf16" and rows[4].key.name == "bf16"
