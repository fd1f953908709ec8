"""Gemma-3-270M (base) on vLLM's CPU build: five of every six layers slide (window 512), head_dim 256, 4 query heads
on 1 KV head. One engine (isoquant4): the sliding layers get vLLM's sliding-window groups with packed pages that fill
the KV budget, greedy text runs past the window, and prefix-cache hits change nothing. The model comes from four
packages of the package index, joined and converted once into ~/.cache/multi-turboquant (models.gemma3_model); the
every-format comparison with `auto` is benchmarks/vllm_quality.py --model gemma3 (BENCHMARKS.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("gguf")

from multi_turboquant.formats import get_format  # noqa: E402

from .conftest import text_prompts  # noqa: E402
from .test_e2e import run_probe  # noqa: E402

KV_BUDGET = 1 << 30  # VLLM_CPU_KVCACHE_SPACE=1 (run_probe)
WINDOW, LAYERS, SLIDING = 512, 18, 15
PROMPT_TOKENS, NEW_TOKENS = 560, 8
BOS = 2


@pytest.fixture(scope="module")
def gemma3() -> Path:
    from multi_turboquant.models import gemma3_model

    return gemma3_model()


@pytest.fixture(scope="module")
def run(gemma3, tmp_path_factory) -> dict:
    # a prompt longer than the window (its decode reads only the window, its first pages freed), prefilled in
    # chunks of one block: the prefix-hit run computes steps the first run computed with the same shapes
    prompt = text_prompts(gemma3, 1, PROMPT_TOKENS)[0]
    assert prompt[0] == BOS  # Gemma needs its BOS (the corpus' first window has it)
    config = {"name": "gemma3-isoquant4", "kv_cache_dtype": "isoquant4", "model": str(gemma3), "prompts": [prompt],
              "max_tokens": NEW_TOKENS, "max_model_len": 1024, "plugin_config": {"calibration": "none"}}
    return run_probe([config], tmp_path_factory.mktemp("gemma"), VLLM_ENABLE_V1_MULTIPROCESSING="0")[config["name"]]


def test_sliding_layers_get_vllms_sliding_window_groups(run):
    groups = run["kv"]["groups"]
    sliding = [g for g in groups if g["sliding_window"] is not None]
    assert {g["sliding_window"] for g in sliding} == {WINDOW}
    assert sum(g["layers"] for g in sliding) == SLIDING and sum(g["layers"] for g in groups) == LAYERS
    slot = 2 * get_format("isoquant4").bytes_per_vector(256)
    assert {g["page_bytes"] for g in groups} == {run["block_size"] * slot}


def test_packed_pages_fill_the_kv_budget(run):
    # blocks = budget / (page bytes x layers per group): the capacity is the packed size's, `auto` x ideal_ratio
    assert run["kv"]["bytes"] >= 0.95 * KV_BUDGET


def test_greedy_text_past_the_window_and_prefix_hits(run):
    assert len(run["tokens"][0]) == NEW_TOKENS and len(set(run["tokens"][0])) > 3, run["texts"]  # not one token
    assert run["cached_tokens_first"] == [0]
    assert run["cached_tokens_prefix_hit"] == [PROMPT_TOKENS // 32 * 32]  # every full block, window or not
    assert run["tokens_prefix_hit"] == run["tokens_alone"]
