"""The calibration file: round trip, per-family fields, and clear errors for bad files."""
from __future__ import annotations

import json

import pytest
import torch

from multi_turboquant.formats import ChannelParams, get_format
from multi_turboquant.formats.calibration import load_calibration, save_calibration
from multi_turboquant.formats.params import fit_channel_params
from multi_turboquant.formats.version import FORMAT_VERSION

HEADS, D, LAYERS = 3, 64, 4


def _layers(seed: int = 0) -> list[tuple[ChannelParams, ChannelParams]]:
    g = torch.Generator().manual_seed(seed)
    return [tuple(fit_channel_params(torch.randn(200, HEADS, D, generator=g) * torch.rand(D, generator=g) * 5 + 1,
                                     center=True, equalize=True, n_outliers=8) for _ in range(2))
            for _ in range(LAYERS)]


def _save(tmp_path, layers=None):
    path = tmp_path / "turboquant_kv.json"
    save_calibration(path, layers or _layers(), head_dim=D, num_kv_heads=HEADS, model="m", corpus="c")
    return path


def test_round_trip_keeps_every_tensor(tmp_path):
    layers = _layers()
    cal = load_calibration(_save(tmp_path, layers))
    assert (cal.num_layers, cal.head_dim, cal.num_kv_heads, cal.model, cal.corpus) == (LAYERS, D, HEADS, "m", "c")
    assert cal.format_version == FORMAT_VERSION
    for i, pair in enumerate(layers):
        for want, got in zip(pair, cal.layer(i)):
            assert torch.equal(want.offset, got.offset) and torch.equal(want.scale, got.scale)
            assert torch.equal(want.outliers, got.outliers) and got.outliers.shape == (HEADS, 8)


def test_family_fields_are_ones_the_format_accepts(tmp_path):
    cal = load_calibration(_save(tmp_path))
    x = torch.randn(5, HEADS, D)
    for name in ("turboquant25", "isoquant4", "planarquant3"):
        fmt = get_format(name)
        k, v = cal.layer(1, fmt.family)
        assert (k.outliers is not None) == (fmt.family == "turboquant")
        assert (k.scale is None) == (fmt.family == "turboquant")
        for p in (k, v):
            assert fmt.decode(fmt.encode(x, p), D, params=p).shape == x.shape
    with pytest.raises(ValueError, match="outlier channels apply"):
        get_format("isoquant4").encode(x, cal.layer(0)[0])
    with pytest.raises(ValueError, match="unknown format family"):
        cal.layer(0, "nope")
    with pytest.raises(ValueError, match="layers 0..3"):
        cal.layer(LAYERS)


def _edit(tmp_path, fn) -> str:
    path = _save(tmp_path)
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=FORMAT_VERSION + 1), "format version"),
    (lambda d: d.update(kind="other"), "not an mtq calibration file"),
    (lambda d: d["layers"].pop(2), "missing \\[2\\]"),
    (lambda d: d["layers"][1]["key"]["offset"].pop(), "layer 1 key: offset has shape \\(2, 64\\)"),
    (lambda d: d["layers"][0]["value"]["scale"][0].pop(), "layer 0 value"),
    (lambda d: d["layers"][3]["key"]["outliers"][0].__setitem__(0, 64), "out of range"),
    (lambda d: d["layers"][2]["value"]["offset"][1].__setitem__(5, float("nan")), "NaN"),
    (lambda d: d.update(head_dim=0), "head_dim must be a positive integer"),
    (lambda d: d["layers"][0]["key"].update(bias=[1]), "offset/scale/outliers"),
])
def test_bad_files_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_calibration(_edit(tmp_path, edit))


def test_bad_paths_and_non_json(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_calibration(tmp_path / "x.json")


def test_save_refuses_nan_and_wrong_shapes(tmp_path):
    layers = _layers()
    bad = ChannelParams(offset=torch.full((HEADS, D), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        _save(tmp_path, layers[:1] + [(bad, None)] + layers[2:])
    with pytest.raises(ValueError, match="expected \\(3, 64\\)"):
        _save(tmp_path, [(ChannelParams(offset=torch.zeros(D)), None)])


def test_sink_weight_widens_the_key_scale_where_the_sink_sits_apart():
    from multi_turboquant.eval.calibrate import LayerKV, fit_layers

    g = torch.Generator().manual_seed(3)
    keys, values = torch.randn(100, HEADS, D, generator=g), torch.randn(100, HEADS, D, generator=g)
    sink = keys.mean(0)
    sink[:, 5] += 10  # the sink's key is 10 away from the mean in channel 5 only
    layer = LayerKV(keys, values, torch.ones(HEADS, D), sink)
    (k0, v0), = fit_layers([layer], 8)[0]
    (k1, v1), = fit_layers([layer], 8, sink_weight=0.25)[0]
    assert torch.equal(k0.offset, k1.offset) and torch.equal(k0.outliers, k1.outliers)
    assert torch.equal(v0.scale, v1.scale)
    assert torch.allclose(k1.scale[:, 5], (k0.scale[:, 5] ** 2 + 0.25 * 100).sqrt())
    assert torch.equal(k1.scale[:, torch.arange(D) != 5], k0.scale[:, torch.arange(D) != 5])


def test_save_creates_missing_folders_and_refuses_a_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "turboquant_kv.json"
    save_calibration(path, _layers(), head_dim=D, num_kv_heads=HEADS, model="m", corpus="c")
    assert load_calibration(path).num_layers == LAYERS
    with pytest.raises(ValueError, match="is a directory; name a file"):
        save_calibration(tmp_path, _layers(), head_dim=D, num_kv_heads=HEADS, model="m", corpus="c")


def _rope(d: int = D, horizon: int = 1000) -> "Rope":
    from multi_turboquant.formats.calibration import Rope

    return Rope(10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d), 1.0, horizon)


def test_position_offset_is_the_bucket_mean_of_the_turned_key_mean():
    from multi_turboquant.formats.params import OFFSET_BUCKET

    rope = _rope()
    mean = torch.randn(HEADS, D, generator=torch.Generator().manual_seed(1))
    table = rope.position_offset(mean, 3)
    assert table.shape == (3, HEADS, D)
    p = torch.arange(OFFSET_BUCKET, 2 * OFFSET_BUCKET, dtype=torch.float64)  # row 1, by brute force
    angle = torch.cat((p[:, None] * rope.inv_freq, p[:, None] * rope.inv_freq), -1)
    half = lambda x: torch.cat((-x[..., D // 2:], x[..., :D // 2]), -1)  # noqa: E731
    turned = mean.double()[None] * angle.cos()[:, None] + half(mean.double()[None]) * angle.sin()[:, None]
    assert torch.allclose(table[1].double(), turned.mean(0), atol=1e-6)
    assert torch.allclose(table[0, :, -1], mean[:, -1], atol=0.05)  # the slowest pair hardly turns


def test_rope_mean_round_trip_and_checks(tmp_path):
    layers = [(ChannelParams(scale=torch.ones(HEADS, D)), ChannelParams(offset=torch.zeros(HEADS, D)))
              for _ in range(LAYERS)]
    means = tuple(torch.randn(HEADS, D) for _ in range(LAYERS))
    path = tmp_path / "cal.json"
    save_calibration(path, layers, head_dim=D, num_kv_heads=HEADS, model="m", corpus="c", rope=_rope(),
                     rope_means=means)
    cal = load_calibration(path)
    key, value = cal.layer(1, "isoquant")
    assert key.offset is None and key.position_offset.shape == (4, HEADS, D)  # 1000 positions: 4 rows
    assert cal.layer(1, "isoquant", positions=4096)[0].position_offset.shape[0] == 16
    assert torch.allclose(key.position_offset, _rope().position_offset(means[1], 4))
    assert value.position_offset is None
    with pytest.raises(ValueError, match="needs a rope"):
        save_calibration(path, layers, head_dim=D, num_kv_heads=HEADS, model="m", corpus="c", rope_means=means)
    offset_too = [(ChannelParams(offset=torch.zeros(HEADS, D)), None)] * LAYERS
    with pytest.raises(ValueError, match="replaces the key offset"):
        save_calibration(path, offset_too, head_dim=D, num_kv_heads=HEADS, model="m", corpus="c", rope=_rope(),
                         rope_means=means)


def test_a_position_offset_needs_positions():
    from multi_turboquant.formats import get_format

    params = ChannelParams(position_offset=torch.randn(2, HEADS, D))
    x = torch.randn(5, HEADS, D)
    with pytest.raises(ValueError, match="needs the vectors' positions"):
        get_format("isoquant4").encode(x, params)
    positions = torch.tensor([0, 255, 256, 511, 9000])
    at = params.at(positions)
    assert torch.equal(at.offset[2], params.position_offset[1]) and torch.equal(at.offset[4], params.position_offset[1])
    assert torch.equal(at.offset[1], params.position_offset[0])
    get_format("isoquant4").encode(x, at)  # resolved: a plain per-vector offset


def test_bad_position_offsets_and_rope_are_refused():
    from multi_turboquant.formats.calibration import Rope

    with pytest.raises(ValueError, match="give offset or position_offset, not both"):
        ChannelParams(offset=torch.zeros(HEADS, D), position_offset=torch.zeros(2, HEADS, D)).validate("k", D)
    with pytest.raises(ValueError, match=r"position_offset must be \(rows, heads, d\)"):
        ChannelParams(position_offset=torch.zeros(HEADS, D)).validate("k", D)
    with pytest.raises(ValueError, match="position_offset contains NaN or Inf"):
        ChannelParams(position_offset=torch.full((2, HEADS, D), float("nan"))).validate("k", D)
    with pytest.raises(ValueError, match="expected inv_freq, attention_scaling and horizon"):
        Rope.from_json({"inv_freq": [1.0]})
    with pytest.raises(ValueError, match="horizon a positive integer"):
        Rope.from_json({"inv_freq": [1.0], "attention_scaling": 1.0, "horizon": 0})
