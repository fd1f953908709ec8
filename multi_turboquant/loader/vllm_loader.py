"""vLLM load format `mtq_mmap`: vLLM's default loader reading safetensors through our memory-mapped streamer.

Everything but the weight iterator is vLLM's `DefaultModelLoader` acting as for `--load-format safetensors`
(file discovery, index filtering, expert-parallel filtering, weight tracking). Weights go straight to the
load device: on CUDA they are streamed in bounded chunks through pinned buffers; on CPU they are zero-copy
read-only views of the mapped files that the model's weight loaders copy into its parameters.

Call `register()` before vLLM builds its loader (a vLLM plugin entry point will call it), then pass
`--load-format mtq_mmap` (or `LLM(..., load_format="mtq_mmap")`). Options go in
`--model-loader-extra-config`: `chunk_mib` (default 64), `num_buffers` (default 2) and `device`
("cpu" hands map views to the weight loaders, which then do the host-to-device copy).

vLLM runs the engine in a separate process; registration must happen in that process too, which a vLLM
plugin entry point does (or set VLLM_ENABLE_V1_MULTIPROCESSING=0 to keep the engine in-process).
This module imports vLLM; `multi_turboquant.loader` itself never does.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.model_executor import model_loader as vllm_model_loader
from vllm.model_executor.model_loader import DefaultModelLoader, register_model_loader
from vllm.model_executor.model_loader.ep_weight_filter import should_skip_weight

from .streamer import DEFAULT_CHUNK_BYTES
from .weights import iter_files

LOAD_FORMAT = "mtq_mmap"
OPTIONS = {"chunk_mib": int, "num_buffers": int, "device": str}


class MtqMmapModelLoader(DefaultModelLoader):
    """`DefaultModelLoader` whose safetensors weights come from `multi_turboquant.loader.iter_files`."""

    def __init__(self, load_config: LoadConfig) -> None:
        extra = dict(load_config.model_loader_extra_config or {})
        ours = {key: extra.pop(key) for key in OPTIONS if key in extra}
        for key, value in ours.items():
            bad_int = isinstance(value, bool) or (isinstance(value, int) and value < 1)  # True is an int too
            if not isinstance(value, OPTIONS[key]) or bad_int:
                raise ValueError(f"{LOAD_FORMAT}: {key} must be a positive {OPTIONS[key].__name__}, got {value!r}")
        try:
            device = torch.device(ours["device"]) if "device" in ours else None
        except RuntimeError as exc:
            raise ValueError(f"{LOAD_FORMAT}: device {ours['device']!r} is not a torch device: {exc}") from None
        super().__init__(dataclasses.replace(load_config, load_format="safetensors", model_loader_extra_config=extra))
        self.chunk_bytes: int = ours.get("chunk_mib", DEFAULT_CHUNK_BYTES >> 20) << 20
        self.num_buffers: int = ours.get("num_buffers", 2)
        self.device: torch.device | None = device

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        if self.device is None:
            self.device = torch.device(self.load_config.device or vllm_config.device_config.device or "cpu")
        return super().load_model(vllm_config, model_config, prefix)

    def _get_weights_iterator(self, source: DefaultModelLoader.Source) -> Generator[tuple[str, torch.Tensor], None, None]:
        files = self._prepare_weights(  # (folder, files, use_safetensors), plus the index file from vLLM 0.31
            source.model_or_path,
            source.subfolder,
            source.revision,
            source.fall_back_to_pt,
            source.allow_patterns_overrides,
        )[1]
        weights = iter_files(
            sorted(files),
            self.device or "cpu",
            chunk_bytes=self.chunk_bytes,
            num_buffers=self.num_buffers,
            keep=lambda name: not should_skip_weight(name, self.local_expert_ids),
        )
        if self.counter_before_loading_weights == 0.0:
            self.counter_before_loading_weights = time.perf_counter()
        return ((source.prefix + name, tensor) for name, tensor in weights)


def register() -> type[MtqMmapModelLoader]:
    """Register the `mtq_mmap` load format with vLLM's loader registry (idempotent)."""
    registered = getattr(vllm_model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", {})
    if registered.get(LOAD_FORMAT) is MtqMmapModelLoader:
        return MtqMmapModelLoader
    return register_model_loader(LOAD_FORMAT)(MtqMmapModelLoader)


__all__ = ["LOAD_FORMAT", "MtqMmapModelLoader", "register"]
