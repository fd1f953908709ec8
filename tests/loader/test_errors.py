"""Malformed, truncated and unsupported files are rejected with an error naming the file and the problem."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from multi_turboquant.loader import SafetensorsError, load_weights, read_header

from .conftest import RawWriter

DATA = bytes(20)


def _with(header: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(header)
    out[name].update(changes)
    return out


def test_good_file_parses(write_raw: RawWriter, good_header: dict[str, Any]) -> None:
    header = read_header(write_raw("ok.safetensors", good_header, DATA))
    assert [t.name for t in header.tensors] == ["a", "b"] and header.metadata == {"format": "pt"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: _with(h, "b", data_offsets=[4, 16]), r"'b' bytes \[4, 16\) overlap tensor 'a'"),
        (lambda h: _with(h, "a", data_offsets=[4, 12]), r"gap of 4 bytes before tensor 'a'"),
        (lambda h: _with(h, "a", dtype="F33"), r"tensor 'a': unknown dtype 'F33'"),
        (lambda h: _with(h, "a", dtype=7), r"tensor 'a': unknown dtype 7"),
        (lambda h: _with(h, "a", dtype=["F32"]), r"tensor 'a': unknown dtype \['F32'\]"),  # was a TypeError
        (lambda h: _with(h, "a", dtype={"F32": 1}), r"tensor 'a': unknown dtype \{'F32': 1\}"),
        (lambda h: _with(h, "a", dtype="F4"), r"sub-byte dtype F4 is not supported"),
        (lambda h: _with(h, "a", shape=[3]), r"'a': shape \[3\] of F32 needs 12 bytes but data_offsets span 8"),
        (lambda h: _with(h, "a", shape=[-2]), r"shape must be a list of non-negative integers"),
        (lambda h: _with(h, "a", data_offsets=[8, 0]), r"end 0 < begin 8"),
        (lambda h: _with(h, "a", data_offsets=[0]), r"data_offsets must be \[begin, end\]"),
        (lambda h: {**h, "a": [1, 2]}, r"'a': entry must be an object"),
        (lambda h: {**h, "a": {"dtype": "F32"}}, r"'a': entry lacks data_offsets, shape"),
        (lambda h: {**h, "__metadata__": {"k": 1}}, r"__metadata__ must map strings to strings"),
        (lambda h: {**h, "__metadata__": []}, r"__metadata__ must map strings to strings"),  # was taken as {}
        (lambda h: {**h, "__metadata__": ""}, r"__metadata__ must map strings to strings"),
        (lambda h: _with(h, "b", data_offsets=[8, 16], shape=[2]), r"4 trailing bytes after the last tensor"),
    ],
)
def test_bad_header(write_raw: RawWriter, good_header: dict[str, Any], change: Any, message: str) -> None:
    path = write_raw("bad.safetensors", change(good_header), DATA)
    with pytest.raises(SafetensorsError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_truncated_data_names_file_and_tensor(write_raw: RawWriter, good_header: dict[str, Any]) -> None:
    path = write_raw("cut.safetensors", good_header, DATA[:13])
    with pytest.raises(SafetensorsError, match=r"cut.safetensors: file is truncated: tensor 'b' needs data bytes \[8, 20\)"):
        load_weights(path)


def test_truncated_header(write_raw: RawWriter, good_header: dict[str, Any]) -> None:
    path = write_raw("short.safetensors", good_header, b"", header_len=10_000)
    with pytest.raises(SafetensorsError, match=r"truncated: header length 10000"):
        read_header(path)


def test_huge_header_length(write_raw: RawWriter, good_header: dict[str, Any]) -> None:
    with pytest.raises(SafetensorsError, match="exceeds"):
        read_header(write_raw("huge.safetensors", good_header, DATA, header_len=1 << 40))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "too small for the 8-byte header length"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{x", "not valid UTF-8 JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00\xff\xfe", "not valid UTF-8 JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "must be a JSON object"),
        (b'\x0d\x00\x00\x00\x00\x00\x00\x00{"a":1,"a":2}', "duplicate key 'a'"),
    ],
)
def test_corrupt_bytes(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(raw)
    with pytest.raises(SafetensorsError, match=message):
        read_header(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsError, match="no such file or directory"):
        load_weights(tmp_path / "nope.safetensors")


def test_unreadable_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SafetensorsError, match="cannot read safetensors file"):
        read_header(tmp_path)  # a directory is not a file



def test_null_metadata_is_no_metadata(write_raw: RawWriter, good_header: dict[str, Any]) -> None:
    assert read_header(write_raw("null.safetensors", {**good_header, "__metadata__": None}, DATA)).metadata == {}


def test_unmappable_file_is_a_clear_error(
    write_raw: RawWriter, good_header: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError from mmap (e.g. a file system that cannot map) is a SafetensorsError, which `mtq load` reports."""
    import mmap

    from multi_turboquant.loader import safetensors_file

    def no_map(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError(19, "No such device")

    monkeypatch.setattr(safetensors_file.mmap, "mmap", no_map)
    path = write_raw("ok.safetensors", good_header, DATA)
    with pytest.raises(SafetensorsError, match=r"cannot map safetensors file .*ok.safetensors: \[Errno 19\] No such device"):
        load_weights(path)
