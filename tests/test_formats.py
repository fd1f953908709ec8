"""Reference codecs: sizes, round-trip error, edge cases and every error path."""
from __future__ import annotations

import math

import pytest
import torch

import multi_turboquant as mtq
from multi_turboquant.formats import base as base_mod
from multi_turboquant.formats.params import fit_channel_params

NAMES = list(mtq.FORMATS)
HEAD_DIMS = (64, 96, 128, 256)
# Issue budget at head_dim 128: payload + at most 4 bytes of metadata.
MAX_BYTES_D128 = {"turboquant25": 44, "turboquant35": 60, "isoquant3": 52, "isoquant4": 68,
                  "planarquant3": 52, "planarquant4": 68}
# Relative MSE on N(0, I) data: Lloyd-Max distortion (0.0345 at 3 bits, 0.0095 at 4) plus slack;
# TurboQuant: the MSE stage's average distortion times the 1 - 2/pi left by the 1-bit QJL sketch.
MAX_REL_MSE = {"turboquant25": 0.095, "turboquant35": 0.030, "isoquant3": 0.036, "isoquant4": 0.0100,
               "planarquant3": 0.036, "planarquant4": 0.0100}


def rel_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (((a.float() - b.float()) ** 2).sum() / (b.float() ** 2).sum()).item()


def test_registry_names_and_bits():
    assert NAMES == ["turboquant25", "turboquant35", "isoquant3", "isoquant4", "planarquant3", "planarquant4"]
    assert [mtq.get_format(n).bits for n in NAMES] == [2.5, 3.5, 3, 4, 3, 4]
    for n in NAMES:
        assert mtq.get_format(n).name == n


@pytest.mark.parametrize("name", NAMES)
def test_bytes_per_vector_budget(name):
    fmt = mtq.get_format(name)
    assert fmt.bytes_per_vector(128) <= MAX_BYTES_D128[name]
    for d in HEAD_DIMS:
        payload_bytes = fmt.bits * d / 8
        assert payload_bytes == int(payload_bytes)
        meta = fmt.bytes_per_vector(d) - payload_bytes
        assert 0 < meta <= 4, (name, d, meta)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_roundtrip_error_gaussian(name, head_dim):
    fmt = mtq.get_format(name)
    x = torch.randn(3000, head_dim, generator=torch.Generator().manual_seed(head_dim))
    packed = fmt.encode(x)
    assert packed.dtype == torch.uint8 and packed.shape == (3000, fmt.bytes_per_vector(head_dim))
    assert rel_mse(fmt.decode(packed, head_dim), x) < MAX_REL_MSE[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_and_leading_shapes(name, dtype):
    fmt = mtq.get_format(name)
    x = torch.randn(2, 5, 3, 128).to(dtype)
    packed = fmt.encode(x)
    assert packed.shape == (2, 5, 3, fmt.bytes_per_vector(128))
    # Any leading shape gives the same bytes as the flattened rows.
    assert torch.equal(packed.reshape(-1, packed.shape[-1]), fmt.encode(x.reshape(-1, 128)))
    out = fmt.decode(packed, 128, dtype=dtype)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_mse(out, x) < MAX_REL_MSE[name] * 1.5


@pytest.mark.parametrize("name", NAMES)
def test_zero_vectors_decode_to_zero(name):
    fmt = mtq.get_format(name)
    x = torch.zeros(4, 96)
    x[1] = torch.randn(96)
    out = fmt.decode(fmt.encode(x), 96)
    assert torch.equal(out[[0, 2, 3]], torch.zeros(3, 96))
    assert out[1].abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_scale_equivariance_of_bytes(name):
    """Multiplying by a power of two changes only the stored scale, not the codes."""
    fmt = mtq.get_format(name)
    x = torch.randn(16, 128)
    a, b = fmt.encode(x), fmt.encode(x * 4)
    meta = 4 if fmt.family == "turboquant" else 2
    assert torch.equal(a[:, :-meta], b[:, :-meta])
    assert torch.allclose(fmt.decode(b, 128), 4 * fmt.decode(a, 128))


@pytest.mark.parametrize("name", NAMES)
def test_empty_input(name):
    fmt = mtq.get_format(name)
    packed = fmt.encode(torch.zeros(0, 64))
    assert packed.shape == (0, fmt.bytes_per_vector(64))
    assert fmt.decode(packed, 64).shape == (0, 64)


def test_chunking_does_not_change_bytes(monkeypatch):
    x = torch.randn(100, 64)
    for name in NAMES:
        fmt = mtq.get_format(name)
        whole = fmt.encode(x)
        monkeypatch.setattr(base_mod, "CHUNK_ROWS", 7)
        assert torch.equal(fmt.encode(x), whole)
        assert torch.equal(fmt.decode(whole, 64), fmt.decode(whole, 64))
        monkeypatch.undo()


def test_thread_count_and_layout_do_not_change_bytes():
    x = torch.randn(16, 128, 128)
    threads = torch.get_num_threads()
    for name in NAMES:
        fmt = mtq.get_format(name)
        torch.set_num_threads(1)
        one = fmt.encode(x)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(fmt.encode(x), one)
        # a non-contiguous view of the same values
        assert torch.equal(fmt.encode(x.transpose(0, 1).contiguous().transpose(0, 1)), one)
    torch.set_num_threads(threads)


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head_dim", [8, 72, 100, 1024])
def test_unsupported_head_dim(name, head_dim):
    fmt = mtq.get_format(name)
    with pytest.raises(ValueError, match=rf"{name}: unsupported head_dim {head_dim}"):
        fmt.encode(torch.zeros(2, head_dim))
    with pytest.raises(ValueError, match=rf"{name}: unsupported head_dim {head_dim}"):
        fmt.bytes_per_vector(head_dim)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8])
def test_unsupported_input_dtype(name, dtype):
    with pytest.raises(ValueError, match=rf"{name}: unsupported input dtype {dtype}"):
        mtq.get_format(name).encode(torch.zeros(2, 64, dtype=dtype))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(name, bad):
    x = torch.randn(3, 64)
    x[1, 5] = bad
    with pytest.raises(ValueError, match=rf"{name}: input contains NaN or Inf"):
        mtq.get_format(name).encode(x)


@pytest.mark.parametrize("name", NAMES)
def test_calibration_overflow_raises(name):
    """Finite input that (x - offset) / scale takes past float32's range is an error, not a silent record."""
    x = torch.randn(3, 64)
    x[1, 5] = 3.0e38
    fmt = mtq.get_format(name)
    with pytest.raises(ValueError, match=rf"{name}: input is not finite after calibration"):
        fmt.encode(x, mtq.ChannelParams(scale=torch.full((64,), 0.5)))
    assert fmt.encode(x, mtq.ChannelParams(scale=torch.full((64,), 2.0))).shape == (3, fmt.bytes_per_vector(64))


@pytest.mark.parametrize("name", NAMES)
def test_bad_packed_input(name):
    fmt = mtq.get_format(name)
    n = fmt.bytes_per_vector(64)
    with pytest.raises(ValueError, match="must be a uint8 tensor"):
        fmt.decode(torch.zeros(2, n, dtype=torch.int8), 64)
    with pytest.raises(ValueError, match="must be a uint8 tensor"):
        fmt.decode([0] * n, 64)
    with pytest.raises(ValueError, match=rf"last dim must be {n} bytes"):
        fmt.decode(torch.zeros(2, n + 1, dtype=torch.uint8), 64)
    with pytest.raises(ValueError, match="unsupported output dtype"):
        fmt.decode(torch.zeros(2, n, dtype=torch.uint8), 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="unsupported head_dim"):
        fmt.decode(torch.zeros(2, n, dtype=torch.uint8), 63)


def test_bad_input_objects():
    fmt = mtq.get_format("isoquant3")
    with pytest.raises(ValueError, match="expected a torch.Tensor"):
        fmt.encode([[0.0] * 64])
    with pytest.raises(ValueError, match="scalar"):
        fmt.encode(torch.tensor(1.0))


@pytest.mark.parametrize("bad", ["isoquant5", "fp8", "", None, "ISOQUANT3"])
def test_unknown_format_name(bad):
    with pytest.raises(ValueError, match="unknown KV-cache format"):
        mtq.get_format(bad)


# -- calibration ----------------------------------------------------------------------------------

def outlier_keys(n: int, d: int = 128, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[:, [9, 20, 70, 80]] *= torch.tensor([12.0, 25.0, 40.0, 50.0])  # all in the default regular half
    return x


@pytest.mark.parametrize("name", NAMES)
def test_calibration_roundtrip_and_effect(name):
    fmt = mtq.get_format(name)
    k = outlier_keys(2000)
    kwargs = {"n_outliers": 4} if fmt.family == "turboquant" else {"equalize": True}
    params = fit_channel_params(outlier_keys(2000, seed=1), center=True, **kwargs)
    packed = fmt.encode(k, params)
    calibrated = rel_mse(fmt.decode(packed, 128, params=params), k)
    plain = rel_mse(fmt.decode(fmt.encode(k), 128), k)
    assert calibrated < plain  # calibration must help on outlier channels
    assert calibrated < MAX_REL_MSE[name]
    # the params are part of the contract: decoding without them is wrong
    assert rel_mse(fmt.decode(packed, 128), k) > 2 * calibrated


def test_turboquant_handles_outliers_without_calibration():
    k = outlier_keys(2000)
    for name in ("turboquant25", "turboquant35"):
        fmt = mtq.get_format(name)
        assert rel_mse(fmt.decode(fmt.encode(k), 128), k) < MAX_REL_MSE[name]


def test_per_head_params_broadcast():
    fmt = mtq.get_format("turboquant35")
    x = torch.randn(10, 3, 64)  # tokens, heads, head_dim
    params = mtq.ChannelParams(offset=torch.randn(3, 64), scale=torch.rand(3, 64) + 0.5,
                               outliers=torch.tensor([[0, 1], [5, 6], [62, 63]]))
    packed = fmt.encode(x, params)
    for h in range(3):
        one = mtq.ChannelParams(offset=params.offset[h], scale=params.scale[h], outliers=params.outliers[h])
        assert torch.equal(packed[:, h], fmt.encode(x[:, h], one))
        assert torch.equal(fmt.decode(packed, 64, params=params)[:, h], fmt.decode(packed[:, h], 64, params=one))


def test_params_json_roundtrip(tmp_path):
    p = mtq.ChannelParams(offset=torch.randn(2, 64), scale=torch.rand(2, 64) + 0.1,
                          outliers=torch.tensor([[1, 2], [3, 4]]), centroid=torch.randn(2, 64))
    p.save(tmp_path / "p.json")
    q = mtq.ChannelParams.load(tmp_path / "p.json")
    assert all(torch.equal(getattr(p, f), getattr(q, f)) for f in ("offset", "scale", "outliers", "centroid"))
    with pytest.raises(ValueError, match="format version"):
        mtq.ChannelParams.from_json({"format_version": 999, "offset": [0.0] * 64})
    v1 = mtq.ChannelParams.from_json({"format_version": 1, "offset": [0.5] * 64})  # version 1 reads the same
    assert torch.equal(v1.offset, torch.full((64,), 0.5)) and v1.centroid is None


@pytest.mark.parametrize("name", NAMES)
def test_centroid_flags_the_vectors_nearer_to_it(name):
    fmt = mtq.get_format(name)
    gen = torch.Generator().manual_seed(7)
    offset, centroid = torch.randn(3, 64, generator=gen) * 0.2, torch.randn(3, 64, generator=gen) * 4
    x = torch.randn(40, 3, 64, generator=gen)
    x[:15] = centroid + 0.3 * torch.randn(15, 3, 64, generator=gen)  # sink-like vectors
    scale = None if fmt.family == "turboquant" else torch.rand(3, 64, generator=gen) + 0.5
    plain = mtq.ChannelParams(offset=offset, scale=scale)
    params = mtq.ChannelParams(offset=offset, scale=scale, centroid=centroid)
    packed = fmt.encode(x, params)
    flags = packed[..., -fmt.flag_byte] >= 0x80
    s = 1 if scale is None else scale
    nearer = (((x - centroid) / s) ** 2).sum(-1) < (((x - offset) / s) ** 2).sum(-1)
    assert torch.equal(flags, nearer) and flags[:15].all() and not flags[15:].all()
    # unflagged records are the version-1 bytes; flagged ones are the bytes of x - centroid, sign bit set
    assert torch.equal(packed[~flags], fmt.encode(x, plain)[~flags])
    alt = fmt.encode(x, mtq.ChannelParams(offset=centroid, scale=scale))
    alt[..., -fmt.flag_byte] |= 0x80
    assert torch.equal(packed[flags], alt[flags])
    out = fmt.decode(packed, 64, params=params)
    err, err_plain = rel_mse(out, x), rel_mse(fmt.decode(fmt.encode(x, plain), 64, params=plain), x)
    assert err < 0.6 * err_plain  # the sink-like vectors are stored as small residuals
    assert fmt.decode(packed, 64, params=plain).isfinite().all()  # without the centroid the flag is ignored


def test_centroid_ties_and_the_centroid_itself():
    fmt = mtq.get_format("isoquant4")
    c = torch.randn(64)
    params = mtq.ChannelParams(offset=-c, centroid=c)
    x = torch.stack((c, torch.zeros(64)))  # at the centroid; equidistant (a tie keeps the offset)
    packed = fmt.encode(x, params)
    assert (packed[:, -1] >> 7).tolist() == [1, 0]
    assert torch.equal(fmt.decode(packed, 64, params=params)[0], c)  # scale 0 with the flag: exactly c


@pytest.mark.parametrize("params, message", [
    (dict(offset=torch.zeros(32)), "offset has last dim 32"),
    (dict(scale=torch.ones(64) * -1), "scale must be positive"),
    (dict(scale=torch.full((64,), float("nan"))), "scale contains NaN"),
    (dict(outliers=torch.tensor([1.0, 2.0])), "outliers must be an integer tensor"),
    (dict(outliers=torch.arange(33)), "33 outlier channels exceed head_dim/2"),
    (dict(outliers=torch.tensor([3, 64])), "outlier channel index out of range"),
    (dict(outliers=torch.tensor([3, 3])), "outlier channel indices repeat"),
    (dict(centroid=torch.zeros(48)), "centroid has last dim 48"),
    (dict(centroid=torch.full((64,), float("inf"))), "centroid contains NaN or Inf"),
])
def test_bad_params(params, message):
    with pytest.raises(ValueError, match=f"turboquant35: {message}"):
        mtq.get_format("turboquant35").encode(torch.randn(2, 64), mtq.ChannelParams(**params))


def test_outliers_refused_by_block_formats():
    with pytest.raises(ValueError, match="isoquant3: outlier channels apply to the turboquant formats only"):
        mtq.get_format("isoquant3").encode(torch.randn(2, 64), mtq.ChannelParams(outliers=torch.tensor([1])))


def test_family_codec_modules():
    from multi_turboquant import iso_quant, planar_quant, turbo_quant

    x = torch.randn(4, 128)
    for mod, default in ((turbo_quant, "turboquant35"), (iso_quant, "isoquant3"), (planar_quant, "planarquant3")):
        assert torch.equal(mod.encode(x), mtq.get_format(default).encode(x))
        assert torch.equal(mod.decode(mod.encode(x), 128), mtq.get_format(default).decode(mod.encode(x), 128))
    assert torch.equal(iso_quant.encode(x, bits=4), mtq.get_format("isoquant4").encode(x))
    assert torch.equal(turbo_quant.encode(x, bits=25), mtq.get_format("turboquant25").encode(x))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [2.0**-100, 1e-30, 1e20, 2.0**100, 1e37])
def test_extreme_magnitudes(name, scale):
    """Squares of such inputs under/overflow float32; the encoder normalizes by a power of two first."""
    fmt = mtq.get_format(name)
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(5))
    unit, big = fmt.encode(x), fmt.encode(x * scale)
    meta = 4 if fmt.family == "turboquant" else 2
    if math.frexp(scale)[0] == 0.5:  # x * 2**k is exact: the same codes at any magnitude
        assert torch.equal(unit[:, :-meta], big[:, :-meta])
    out = fmt.decode(big, 64)
    assert torch.isfinite(out).all()
    ref = x.double() * scale
    err = (((out.double() - ref) ** 2).sum() / (ref**2).sum()).item()
    assert err == pytest.approx(rel_mse(fmt.decode(unit, 64), x), rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_decode_stays_finite_in_the_output_dtype(name):
    fmt = mtq.get_format(name)
    x = torch.full((4, 64), 65504.0, dtype=torch.float16)
    x[:, ::2] = -65504.0
    out = fmt.decode(fmt.encode(x), 64, dtype=torch.float16)
    assert torch.isfinite(out).all()
    assert rel_mse(out, x) < 0.1


@pytest.mark.parametrize("name", NAMES)
def test_values_near_float32_max(name):
    """Elements near float32's maximum: no overflow inside encode or decode; the error is the one the
    same vectors get at an ordinary magnitude (2**-100 times smaller, an exact scaling)."""
    fmt = mtq.get_format(name)
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(9)).double()
    x[:, 0] = 1e38
    x[::2] = 1e38  # whole rows near the maximum too (a reconstruction above it would be clamped)
    small = (x * 2.0**-100).float()
    out = fmt.decode(fmt.encode(x.float()), 64).double()
    assert torch.isfinite(out).all()
    err = ((out - x) ** 2).sum(-1) / (x**2).sum(-1)
    out_small = fmt.decode(fmt.encode(small), 64).double()
    err_small = ((out_small - small.double()) ** 2).sum(-1) / (small.double() ** 2).sum(-1)
    assert torch.allclose(err, err_small, rtol=1e-3, atol=1e-6)
