"""A validated safetensors file behind a read-only memory map, handing out zero-copy tensor views.

The map is read-only (ACCESS_READ), not copy-on-write, because Windows charges a copy-on-write view in full
against the commit limit, which is what fails on systems with a small pagefile. Views alias the page
cache; writing to one faults. Each view holds a buffer export of the map, so the map cannot be unmapped
under a live view.
"""
from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import torch

from .errors import SafetensorsError
from .header import Header, TensorInfo, read_header


def as_typed(raw: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """Reinterpret the uint8 bytes `raw` of one tensor as its dtype and shape (copying only if misaligned)."""
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype, device=raw.device)
    if raw.data_ptr() % info.dtype.itemsize:
        raw = raw.clone()
    return raw.view(info.dtype).view(info.shape)


class SafetensorsFile:
    """One validated safetensors file, mapped read-only; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.header: Header = read_header(path)
        self.path: Path = self.header.path
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size != self.header.file_size:
                    raise SafetensorsError(f"{self.path}: file changed size while being opened")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except SafetensorsError:
            raise
        except (OSError, ValueError) as exc:  # gone since its header was read, or a file system that cannot map
            raise SafetensorsError(f"cannot map safetensors file {self.path}: {exc}") from exc

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        return self.header.tensors

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def byte_view(self, begin: int, end: int) -> torch.Tensor:
        """uint8 CPU tensor aliasing data-section bytes [begin, end) of the map (no copy)."""
        window = memoryview(self._map)[self.header.data_start + begin : self.header.data_start + end]
        if not len(window):
            return torch.empty(0, dtype=torch.uint8)
        with warnings.catch_warnings():
            # The map is read-only on purpose; torch warns that it cannot mark tensors read-only.
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            return torch.frombuffer(window, dtype=torch.uint8)

    def view(self, info: TensorInfo) -> torch.Tensor:
        """Zero-copy, read-only CPU tensor of one entry."""
        return as_typed(self.byte_view(info.begin, info.end), info)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, zero-copy view) pairs in file order."""
        for info in self.tensors:
            yield info.name, self.view(info)

    def close(self) -> None:
        """Unmap now unless views are alive; then the map goes when the last view is freed."""
        try:
            self._map.close()
        except BufferError:
            pass

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
