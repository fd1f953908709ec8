"""Run vLLM engines one after another and record what the end-to-end tests check (run as a script).

usage: python engine_probe.py OUT.json CONFIGS.json
Each config: {"name", "model", "kv_cache_dtype", "plugin_config"?, "prompts": [[token ids]...], "max_tokens",
"max_num_batched_tokens"? (default 512; smaller values chunk the prefills)}.
Per config it records the KV capacity, the greedy tokens of all prompts run together (concurrent sequences), and
those of the first half of the prompts again (half as many tokens), whose full blocks are then prefix-cache hits.
"""
from __future__ import annotations

import gc
import json
import sys
import time


def probe(config: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from multi_turboquant.vllm.engine import build_llm, capacity_tokens

    start = time.perf_counter()
    llm = build_llm(config["model"], config["kv_cache_dtype"], plugin_config=config.get("plugin_config"),
                    max_model_len=config.get("max_model_len", 8192), block_size=32,
                    max_num_batched_tokens=config.get("max_num_batched_tokens", 512),
                    max_num_seqs=8, enable_prefix_caching=True, seed=0)
    init_s = time.perf_counter() - start
    params = SamplingParams(max_tokens=config["max_tokens"], temperature=0.0)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in config["prompts"]]
    again = SamplingParams(max_tokens=max(1, config["max_tokens"] // 2), temperature=0.0)
    runs = [llm.generate(prompts, params, use_tqdm=False),
            llm.generate(prompts[:len(prompts) // 2], again, use_tqdm=False)]
    result = {
        "name": config["name"],
        "capacity_tokens": capacity_tokens(llm),
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
        "init_s": round(init_s, 1),
        "run_s": round(time.perf_counter() - start - init_s, 1),
        "tokens": [list(o.outputs[0].token_ids) for o in runs[0]],
        "tokens_prefix_hit": [list(o.outputs[0].token_ids) for o in runs[1]],
        "cached_tokens_prefix_hit": [o.num_cached_tokens or 0 for o in runs[1]],
        "texts": [o.outputs[0].text for o in runs[0]],
    }
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
