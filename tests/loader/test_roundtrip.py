"""Tensors read by the loader equal what the reference safetensors writer wrote, for every dtype and shape."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from multi_turboquant.loader import SafetensorsFile, iter_weights, load_weights
from multi_turboquant.loader.dtypes import DTYPES

from .conftest import RawWriter

st = pytest.importorskip("safetensors.torch")

SHAPES = [(), (0,), (0, 3), (1,), (5,), (3, 5, 7), (2, 1, 1, 3)]
# Dtypes the installed writer can write (older safetensors releases lack some of ours).
WRITABLE = [name for name, dtype in DTYPES.items() if dtype in getattr(st, "_SIZE", {}) and name in getattr(st, "_TYPES", {})]


def _random(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bytes reinterpreted as `dtype` (bool: 0/1 only), so every bit pattern class is exercised."""
    n = int(torch.Size(shape).numel())
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality with dtype and shape (NaN payloads included)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
    )


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"{name}.{i}": _random(DTYPES[name], shape, gen) for name in WRITABLE for i, shape in enumerate(SHAPES)
    }
    path = tmp_path_factory.mktemp("rt") / "all.safetensors"
    st.save_file(tensors, str(path), metadata={"who": "test"})
    return path, tensors


def test_writer_covers_the_formats_main_dtypes() -> None:
    assert {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"} <= set(WRITABLE)


def test_views_match_writer(every_dtype: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = every_dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no writability warning leaks out
        got = load_weights(path)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert _same(got[name], tensor), name


def test_copies_match_and_are_writable(every_dtype: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = every_dtype
    got = load_weights(path, copy=True)
    for name, tensor in expected.items():
        assert _same(got[name], tensor), name
    got["F32.4"].fill_(1.0)
    assert load_weights(path)["F32.4"].ne(1.0).any()


def test_matches_safe_open(every_dtype: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = every_dtype
    with st.safe_open(str(path), framework="pt") as ref, SafetensorsFile(path) as f:
        assert f.metadata == ref.metadata() == {"who": "test"}
        names = [t.name for t in f.tensors]
        assert sorted(names) == sorted(ref.keys())
        for name, tensor in f:
            assert _same(tensor, ref.get_tensor(name)), name


def test_view_outlives_close(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    st.save_file({"w": torch.arange(1000, dtype=torch.int32)}, str(path))
    with SafetensorsFile(path) as f:
        view = f.view(f.tensors[0])
    assert torch.equal(view, torch.arange(1000, dtype=torch.int32))  # the map stays while the view lives


def test_iter_yields_pairs_in_file_order(every_dtype: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = every_dtype
    pairs = list(iter_weights(path))
    assert all(isinstance(n, str) and isinstance(t, torch.Tensor) for n, t in pairs)
    with SafetensorsFile(path) as f:
        assert [n for n, _ in pairs] == [t.name for t in f.tensors]
        assert [t.begin for t in f.tensors] == sorted(t.begin for t in f.tensors)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_from_raw_bytes(write_raw: RawWriter, name: str) -> None:
    """Every dtype of the table, including ones the installed writer may lack (F8_E8M0)."""
    dtype = DTYPES[name]
    data = bytes((i * 37) % 256 for i in range(6 * dtype.itemsize)) if dtype != torch.bool else bytes([1, 0, 0, 1, 1, 0])
    path = write_raw("one.safetensors", {"x": {"dtype": name, "shape": [2, 3], "data_offsets": [0, len(data)]}}, data)
    got = load_weights(path)["x"]
    assert got.dtype == dtype and got.shape == (2, 3)
    assert got.reshape(-1).view(torch.uint8).tolist() == list(data)
