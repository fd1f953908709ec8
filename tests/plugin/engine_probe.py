"""Run vLLM engines one after another and record what the end-to-end tests check (run as a script).

usage: python engine_probe.py OUT.json CONFIGS.json
Each config: {"name", "model", "kv_cache_dtype", "plugin_config"?, "max_num_batched_tokens"? (default 32, the block
size: prefills run in chunks of one block), "windows"?: [[token ids]...], "prompts"?: [[token ids]...],
"max_tokens"?, "break_codec"?}.
Per config it records the KV capacity and:
- windows: the mean NLL (nats/token) of each window's tokens from vLLM's prompt logprobs (teacher-forced: every
  chunk after the first reads its context back from the KV cache);
- prompts: the greedy tokens of all prompts run together (concurrent sequences), reported, not gated; then, with
  the prefix cache emptied, the first two prompts each run alone twice: the second run's full blocks are prefix-cache
  hits and every step it computes is one the first run computed with the same shapes.
"break_codec" swaps in a deliberately broken codec (test code, below) and needs VLLM_ENABLE_V1_MULTIPROCESSING=0,
which keeps vLLM's engine in this process so the swap reaches it.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time

import torch


def _break_codec(kind: str) -> None:
    """Make the reference store write wrong keys: `reversed` channels, or `half` of the channels zeroed."""
    from multi_turboquant.kernels import naive

    store = naive.store

    def broken_store(key, value, *args, **kwargs):
        if kind == "reversed":
            key = key.flip(-1)
        elif kind == "half":
            key = torch.cat([key[..., : key.shape[-1] // 2], torch.zeros_like(key[..., key.shape[-1] // 2:])], -1)
        else:
            raise ValueError(f"unknown break_codec {kind!r}")
        return store(key, value, *args, **kwargs)

    naive.store = broken_store


def greedy(llm, prompts: list[list[int]], max_tokens: int) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


def probe(config: dict) -> dict:
    from multi_turboquant.vllm.engine import build_llm, capacity_tokens, kv_cache_report, token_nll

    if config.get("break_codec"):
        _break_codec(config["break_codec"])
    start = time.perf_counter()
    llm = build_llm(config["model"], config["kv_cache_dtype"], plugin_config=config.get("plugin_config"),
                    max_model_len=config.get("max_model_len", 8192), block_size=32,
                    max_num_batched_tokens=config.get("max_num_batched_tokens", 32),
                    max_num_seqs=8, enable_prefix_caching=True, seed=0,
                    tensor_parallel_size=config.get("tensor_parallel_size", 1))
    init_s = time.perf_counter() - start
    result = {
        "name": config["name"],
        "kv_cache_dtype": config["kv_cache_dtype"],
        "head_dim": llm.llm_engine.vllm_config.model_config.get_head_size(),
        "capacity_tokens": capacity_tokens(llm),
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
        "init_s": round(init_s, 1),
        "token_nll": token_nll(llm, config["windows"]) if config.get("windows") else [],
    }
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":  # the scheduler is in this process
        result["kv"] = kv_cache_report(llm)
    result["window_nll"] = [sum(nll) / len(nll) for nll in result["token_nll"]]
    if not config.get("token_nll"):
        del result["token_nll"]
    result["window_s"] = round(time.perf_counter() - start - init_s, 1)
    if config.get("prompts"):
        outs = greedy(llm, config["prompts"], config["max_tokens"])
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        result["texts"] = [o.outputs[0].text for o in outs]
        llm.reset_prefix_cache()
        first, again = [], []
        for prompt in config["prompts"][:2]:
            first += greedy(llm, [prompt], config["max_tokens"])
            again += greedy(llm, [prompt], config["max_tokens"])
        result["tokens_alone"] = [list(o.outputs[0].token_ids) for o in first]
        result["tokens_prefix_hit"] = [list(o.outputs[0].token_ids) for o in again]
        result["cached_tokens_first"] = [o.num_cached_tokens or 0 for o in first]
        result["cached_tokens_prefix_hit"] = [o.num_cached_tokens or 0 for o in again]
    result["run_s"] = round(time.perf_counter() - start - init_s, 1)
    del llm
    gc.collect()
    return result


def main(out: str, configs_path: str) -> None:
    with open(configs_path) as f:
        configs = json.load(f)
    results = []
    for i, config in enumerate(configs, 1):
        print(f"[engine_probe {i}/{len(configs)}] {config['name']}", file=sys.stderr, flush=True)
        results.append(probe(config))
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
