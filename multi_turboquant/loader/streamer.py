"""Copy tensors from a safetensors file to a device in bounded chunks through staging buffers.

Consecutive tensors (file order) are grouped into byte ranges of at most `chunk_bytes`; a tensor larger
than that is a group of its own. Each group is copied into one device byte buffer chunk by chunk: the CPU
copies chunk i+1 from the map into one staging buffer while the device copies chunk i out of another (for
CUDA: pinned buffers, a side stream, and one event per buffer that says when the buffer may be refilled).
The group's tensors are views of its device buffer. Host memory in use is num_buffers x chunk_bytes,
whatever the file size. On a non-CUDA device the same code runs with plain copies (this is how the chunking
is tested without a GPU).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .header import TensorInfo
from .safetensors_file import SafetensorsFile, as_typed

DEFAULT_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Group:
    """Consecutive tensors copied as the single byte range [begin, end)."""

    tensors: tuple[TensorInfo, ...]

    @property
    def begin(self) -> int:
        return self.tensors[0].begin

    @property
    def end(self) -> int:
        return self.tensors[-1].end


def plan_groups(tensors: Sequence[TensorInfo], chunk_bytes: int) -> list[Group]:
    """Batch runs of small file-ordered tensors into groups spanning at most chunk_bytes (gaps included)."""
    groups: list[Group] = []
    run: list[TensorInfo] = []
    for t in tensors:
        if run and (t.nbytes >= chunk_bytes or t.end - run[0].begin > chunk_bytes):
            groups.append(Group(tuple(run)))
            run = []
        run.append(t)
        if t.nbytes >= chunk_bytes:
            groups.append(Group(tuple(run)))
            run = []
    if run:
        groups.append(Group(tuple(run)))
    return groups


class DeviceStreamer:
    """Streams the tensors of mapped files to `device` through `num_buffers` staging buffers of `chunk_bytes`."""

    def __init__(
        self,
        device: str | torch.device,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        num_buffers: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        if chunk_bytes < 1 or num_buffers < 1:
            raise ValueError(f"chunk_bytes and num_buffers must be positive, got {chunk_bytes}, {num_buffers}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        cuda = self.device.type == "cuda"
        pin = cuda if pin_memory is None else pin_memory
        self.chunk_bytes = chunk_bytes
        self._staging = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(num_buffers)]
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._free = [torch.cuda.Event() for _ in range(num_buffers)] if cuda else []
        self._turn = 0

    def _copy(self, f: SafetensorsFile, begin: int, dst: torch.Tensor) -> None:
        """Copy data-section bytes [begin, begin + dst.numel()) of `f` into uint8 `dst`, one chunk at a time."""
        total = dst.numel()
        for off in range(0, total, self.chunk_bytes):
            k = self._turn
            self._turn = (k + 1) % len(self._staging)
            n = min(self.chunk_bytes, total - off)
            stage = self._staging[k][:n]
            if self._stream is not None:
                self._free[k].synchronize()  # the device has finished reading this buffer's previous chunk
            stage.copy_(f.byte_view(begin + off, begin + off + n))
            if self._stream is None:
                dst[off : off + n].copy_(stage)
                continue
            with torch.cuda.stream(self._stream):
                dst[off : off + n].copy_(stage, non_blocking=True)
                self._free[k].record(self._stream)

    def stream(self, f: SafetensorsFile, tensors: Sequence[TensorInfo] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, device tensor) pairs of one file (or of `tensors`, a file-ordered subset of it), in file order."""
        groups = plan_groups(f.tensors if tensors is None else tensors, self.chunk_bytes)
        # (side stream, consumer's stream) on CUDA
        streams = (self._stream, torch.cuda.current_stream(self.device)) if self._stream is not None else None
        for group in groups:
            dst = torch.empty(group.end - group.begin, dtype=torch.uint8, device=self.device)
            if streams is not None:
                # dst may reuse memory the consumer's stream still reads; the side stream waits for it first.
                streams[0].wait_stream(streams[1])
            self._copy(f, group.begin, dst)
            if streams is not None:
                streams[1].wait_stream(streams[0])
            for t in group.tensors:
                yield t.name, as_typed(dst[t.begin - group.begin : t.end - group.begin], t)
