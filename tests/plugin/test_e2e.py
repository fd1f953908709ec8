"""End to end on vLLM's CPU build: every format serves SmolLM2 coherently, at its packed capacity, unchanged by
prefix-cache hits; kept layers, another value format and chunked prefill together ("mixed"); a head_dim-128 GQA
model runs too. One subprocess runs all engines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from multi_turboquant.formats import FORMATS  # noqa: E402
from multi_turboquant.vllm.engine import ideal_ratio  # noqa: E402

from .conftest import text_prompts  # noqa: E402

PROBE = Path(__file__).with_name("engine_probe.py")
N_PROMPTS, PROMPT_TOKENS, NEW_TOKENS = 8, 48, 16
MIXED = {"value_format": "planarquant3", "keep_layers": [0, 29]}
# Coherence, measured in this setup (BENCHMARKS.md, "vLLM plugin on vLLM's CPU build"): the bf16 model's mean NLL of each
# format's greedy continuation was auto 1.0, isoquant4 1.15, planarquant4 1.36, turboquant35 1.28, planarquant3 2.0,
# isoquant3 2.3, turboquant25 2.3, mixed 1.44 nats/token (random tokens: ~11). Greedy agreement with `auto` over the
# first 16 tokens of 8 prompts was 0.30 / 0.27 / 0.27 / 0.12 / 0.17 / 0.05 / 0.19 (the quality harness,
# `mtq eval quality`, gives isoquant4 0.30 on the same kind of prompts). Bounds sit about halfway to garbage.
MAX_EXTRA_NLL = {"isoquant4": 1.0, "planarquant4": 1.0, "turboquant35": 1.0,
                 "isoquant3": 2.0, "planarquant3": 2.0, "turboquant25": 2.0, "mixed": 2.0}
MIN_AGREEMENT = {"isoquant4": 0.15, "planarquant4": 0.15, "turboquant35": 0.12,
                 "isoquant3": 0.06, "planarquant3": 0.06, "turboquant25": 0.02, "mixed": 0.06}


@pytest.fixture(scope="module")
def runs(smollm2, tiny_head128, tmp_path_factory) -> dict[str, dict]:
    prompts = text_prompts(smollm2, N_PROMPTS, PROMPT_TOKENS)
    common = {"model": str(smollm2), "prompts": prompts, "max_tokens": NEW_TOKENS}
    configs = [{"name": name, "kv_cache_dtype": name, **common} for name in ("auto", *FORMATS)]
    configs.append({"name": "mixed", "kv_cache_dtype": "isoquant4", "plugin_config": MIXED, **common,
                    "max_num_batched_tokens": 32})  # prompts of 48 tokens: chunked prefill
    tiny = {"model": str(tiny_head128), "prompts": prompts[:2], "max_tokens": 8, "max_model_len": 4096}
    configs.append({"name": "head128-turboquant35", "kv_cache_dtype": "turboquant35", **tiny})
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "configs.json").write_text(json.dumps(configs))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([sys.executable, str(PROBE), str(tmp / "out.json"), str(tmp / "configs.json")],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["name"]: r for r in json.loads((tmp / "out.json").read_text())}


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs)


@pytest.mark.parametrize("name", list(FORMATS))
def test_capacity_is_the_packed_size(runs, name):
    ratio = runs[name]["capacity_tokens"] / runs["auto"]["capacity_tokens"]
    assert ratio >= 0.95 * ideal_ratio(name, 64), (name, ratio)


def test_capacity_with_kept_layers_and_another_value_format(runs):
    bf16 = 2 * 64 * 2
    packed = FORMATS["isoquant4"].bytes_per_vector(64) + FORMATS["planarquant3"].bytes_per_vector(64)
    ideal = 30 * bf16 / (28 * packed + 2 * bf16)
    ratio = runs["mixed"]["capacity_tokens"] / runs["auto"]["capacity_tokens"]
    assert 0.95 * ideal <= ratio <= 1.01 * ideal  # auto rounds its blocks down too


@pytest.fixture(scope="module")
def bf16_nll(runs, smollm2) -> dict[str, float]:
    """Mean NLL (nats/token) the bf16 model assigns to each run's greedy continuations of its prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    prompts = text_prompts(smollm2, N_PROMPTS, PROMPT_TOKENS)
    result = {}
    for name, run in runs.items():
        if name.startswith("head128"):
            continue
        total = count = 0
        for prompt, out in zip(prompts, run["tokens"]):
            ids = torch.tensor([prompt + out])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].log_softmax(-1)
            total -= logp.gather(1, ids[0, 1:, None])[len(prompt) - 1:].sum().item()
            count += len(out)
        result[name] = total / count
    return result


@pytest.mark.parametrize("name", [*FORMATS, "mixed"])
def test_greedy_output_is_coherent(runs, bf16_nll, name):
    assert all(len(t) == NEW_TOKENS for t in runs[name]["tokens"])
    assert bf16_nll[name] <= bf16_nll["auto"] + MAX_EXTRA_NLL[name], bf16_nll
    assert agreement(runs[name]["tokens"], runs["auto"]["tokens"]) >= MIN_AGREEMENT[name]


def test_no_placebo(runs):
    names = ["auto", *FORMATS, "mixed"]
    for a, b in combinations(names, 2):
        assert runs[a]["tokens"] != runs[b]["tokens"], f"{a} and {b} produced identical output"


@pytest.mark.parametrize("name", ["auto", *FORMATS])
def test_prefix_cache_hit_keeps_output(runs, name):
    # Not asserted for the chunked-prefill engine ("mixed"): there 1 of 4 prompts diverged after 5 equal tokens at a
    # digit near-tie (isoquant4 alone with chunks of 32 too, bf16 with chunks did not) - see BENCHMARKS.md.
    run = runs[name]
    assert all(c >= run["block_size"] for c in run["cached_tokens_prefix_hit"]), run["cached_tokens_prefix_hit"]
    assert run["tokens_prefix_hit"] == [t[:NEW_TOKENS // 2] for t in run["tokens"][:N_PROMPTS // 2]]


def test_head_dim_128_gqa(runs):
    run = runs["head128-turboquant35"]
    bf16_tokens = (1 << 30) // (2 * 1 * 128 * 2 * 2)  # 1 GiB / (layers x KV heads x head_dim x K,V x bf16 bytes)
    assert run["capacity_tokens"] / bf16_tokens >= 0.95 * ideal_ratio("turboquant35", 128)
    assert all(len(t) == 8 for t in run["tokens"])
    assert run["tokens_prefix_hit"] == [t[:4] for t in run["tokens"][:1]]
