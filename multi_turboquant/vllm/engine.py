"""Building vLLM engines with our formats, and reading their KV capacity."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..formats.registry import FORMATS, get_format

DEFAULT_CPU_KV_GIB = 1


def build_llm(model: str | Path, kv_cache_dtype: str = "auto", *, plugin_config: dict | None = None,
              max_model_len: int = 2048, **kwargs: Any):
    """vLLM's LLM for `model` with `kv_cache_dtype`; `plugin_config` becomes additional_config["multi_turboquant"].

    Call it under `if __name__ == "__main__":` (vLLM spawns its engine process). On a CPU build the KV budget is
    $VLLM_CPU_KVCACHE_SPACE GiB (default 1 here) and the model runs eagerly (torch.compile costs minutes there).
    """
    import torch
    from vllm import LLM

    from .plugin import require_registered

    if kv_cache_dtype in FORMATS:
        require_registered()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a model folder (no config.json)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KV_GIB))
    kwargs.setdefault("enforce_eager", not torch.cuda.is_available())
    if plugin_config:
        kwargs["additional_config"] = {"multi_turboquant": plugin_config}
    return LLM(str(path), kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len, **kwargs)


def token_nll(llm, windows: list[list[int]]) -> list[list[float]]:
    """Per-token NLL of each window's tokens 1..n given the tokens before them, teacher-forced (vLLM's prompt
    logprobs, prefilled in max_num_batched_tokens chunks)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params, use_tqdm=False)
    return [[-step[t].logprob for step, t in zip(out.prompt_logprobs[1:], ids[1:])] for out, ids in zip(outs, windows)]


def capacity_tokens(llm) -> int:
    """Tokens the engine's KV cache holds (blocks x block size), as vLLM reports at start-up."""
    cache = llm.llm_engine.vllm_config.cache_config
    return int(cache.num_gpu_blocks) * int(cache.block_size)


def _scheduler(llm_engine):
    """The scheduler of an in-process v1 engine (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return llm_engine.engine_core.engine_core.scheduler


def kv_cache_report(llm) -> dict:
    """The KV cache as vLLM's scheduler allocated it (needs the engine in this process,
    VLLM_ENABLE_V1_MULTIPROCESSING=0): bytes, blocks, vLLM's group-aware token capacity (sliding-window layers
    counted by their window, as vLLM's start-up log counts them) and per KV-cache group its spec, window and layers."""
    from vllm.v1.core.kv_cache_utils import get_kv_cache_capacity

    config = _scheduler(llm.llm_engine).kv_cache_config
    tokens, _ = get_kv_cache_capacity(llm.llm_engine.vllm_config, config)
    return {"bytes": sum(t.size for t in config.kv_cache_tensors), "blocks": config.num_blocks, "vllm_tokens": tokens,
            "groups": [{"spec": type(g.kv_cache_spec).__name__, "sliding_window": getattr(g.kv_cache_spec,
                                                                                           "sliding_window", None),
                        "layers": len(g.layer_names), "page_bytes": g.kv_cache_spec.page_size_bytes}
                       for g in config.kv_cache_groups]}


def ideal_ratio(kv_cache_dtype: str, head_dim: int, value_format: str | None = None, model_bytes: int = 2) -> float:
    """Model-dtype bytes over packed bytes for one K+V pair (all layers quantized)."""
    packed = get_format(kv_cache_dtype).bytes_per_vector(head_dim)
    packed += get_format(value_format or kv_cache_dtype).bytes_per_vector(head_dim)
    return 2 * head_dim * model_bytes / packed


def kv_blocks(llm_engine) -> tuple[int, int]:
    """(blocks in use, blocks in all) of an in-process v1 engine's KV cache, vLLM's null block aside; a freed block
    still in the prefix cache counts as free (vLLM evicts it when it needs the block)."""
    pool = _scheduler(llm_engine).kv_cache_manager.block_pool
    total = pool.num_gpu_blocks - 1
    return total - pool.get_num_free_blocks(), total
