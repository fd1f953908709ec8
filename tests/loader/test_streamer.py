"""The chunked device path, run on CPU with unpinned staging so it is tested without a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multi_turboquant.loader import DeviceStreamer, SafetensorsFile, iter_weights
from multi_turboquant.loader.header import TensorInfo
from multi_turboquant.loader.streamer import plan_groups

st = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "big": torch.randn(67, 13, generator=gen).bfloat16(),
        "odd": torch.randint(-100, 100, (37,), dtype=torch.int8, generator=gen),
        "fp8": torch.randn(5, 3, generator=gen).to(torch.float8_e5m2),
        "f64": torch.randn(9, generator=gen, dtype=torch.float64),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 7),
        "mask": torch.randint(0, 2, (11,), generator=gen).bool(),
    }
    path = tmp_path_factory.mktemp("stream") / "mixed.safetensors"
    st.save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 64, 1000, 1 << 20])
@pytest.mark.parametrize("num_buffers", [1, 2, 3])
def test_chunked_copy_is_exact(mixed_file: tuple[Path, dict[str, torch.Tensor]], chunk_bytes: int, num_buffers: int) -> None:
    path, expected = mixed_file
    streamer = DeviceStreamer("cpu", chunk_bytes=chunk_bytes, num_buffers=num_buffers, pin_memory=False)
    with SafetensorsFile(path) as f:
        got = dict(streamer.stream(f))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


def test_streamed_tensors_do_not_alias_the_map(mixed_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = mixed_file
    streamer = DeviceStreamer("cpu", chunk_bytes=16, pin_memory=False)
    with SafetensorsFile(path) as f:
        got = dict(streamer.stream(f))
        view_ptrs = {f.view(t).data_ptr() for t in f.tensors if t.nbytes}
    assert not view_ptrs & {t.data_ptr() for t in got.values() if t.numel()}
    got["big"].zero_()  # owned memory: writable
    assert torch.equal(got["odd"], expected["odd"])


def _infos(sizes: list[int]) -> list[TensorInfo]:
    out, pos = [], 0
    for i, n in enumerate(sizes):
        out.append(TensorInfo(f"t{i}", torch.uint8, (n,), pos, pos + n))
        pos += n
    return out


@pytest.mark.parametrize(
    ("sizes", "chunk", "expected"),
    [
        ([1, 2, 3, 4], 4, [[0, 1], [2], [3]]),  # batch small ones while they fit
        ([10, 1, 1], 4, [[0], [1, 2]]),  # a large tensor is a group of its own
        ([1, 10, 1], 4, [[0], [1], [2]]),
        ([0, 0, 4, 0], 4, [[0, 1], [2], [3]]),
        ([2, 2, 2, 2], 8, [[0, 1, 2, 3]]),
        ([], 4, []),
    ],
)
def test_plan_groups(sizes: list[int], chunk: int, expected: list[list[int]]) -> None:
    groups = plan_groups(_infos(sizes), chunk)
    assert [[int(t.name[1:]) for t in g.tensors] for g in groups] == expected
    for g in groups:
        assert len(g.tensors) == 1 or g.end - g.begin <= chunk


def test_iter_weights_to_other_device_uses_streamer(mixed_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = mixed_file
    # "meta" is a non-CPU device with no data: the streamer runs, and tensors come back with right dtype/shape.
    got = dict(iter_weights(path, device="meta", chunk_bytes=8))
    assert all(t.device.type == "meta" for t in got.values())
    assert got["big"].shape == (67, 13) and got["big"].dtype == torch.bfloat16


def test_rejects_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        DeviceStreamer("cpu", chunk_bytes=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
def test_cuda_streaming_is_exact(mixed_file: tuple[Path, dict[str, torch.Tensor]], chunk_bytes: int) -> None:
    path, expected = mixed_file
    got = dict(iter_weights(path, device="cuda", chunk_bytes=chunk_bytes))
    for name, tensor in expected.items():
        assert got[name].is_cuda and torch.equal(got[name].cpu().reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
