"""Fixtures for the vLLM plugin tests: a tiny head_dim-128 model and prompts from real text (`smollm2` is in
tests/conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def random_llama(smollm2: Path, out: Path, key_bias: float = 0.0, **shape) -> Path:
    """A Llama with random weights (seed 0) of the given shape at `out`, sharing SmolLM2's tokenizer; with
    key_bias, attention biases whose key part is Gaussian with that deviation (each KV head its own key offset)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         torch_dtype="bfloat16", attention_bias=bool(key_bias), **shape)
    model = LlamaForCausalLM(config)
    if key_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.k_proj.bias.normal_(0.0, key_bias)
    model.to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_gemma3(smollm2: Path, tmp_path_factory) -> Path:
    """A 2-layer Gemma 3 with random weights: a sliding layer (window 16, local RoPE base) and a global one."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-gemma3")
    config = Gemma3TextConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=64, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    Gemma3ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_head128(smollm2: Path, tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights, head_dim 128 and GQA 4."""
    return random_llama(smollm2, tmp_path_factory.mktemp("tiny-head128"), hidden_size=256, intermediate_size=512,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=128)


@pytest.fixture(scope="session")
def tiny_kv8(smollm2: Path, tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and 8 KV heads of head_dim 64 (4 per rank at tensor parallel 2)."""
    return random_llama(smollm2, tmp_path_factory.mktemp("tiny-kv8"), hidden_size=512,
                        intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                        head_dim=64)


def corpus_ids(tokenizer_dir: Path) -> list[int]:
    """The default corpus (Debian license texts) as token ids."""
    from transformers import AutoTokenizer

    from multi_turboquant.eval.corpus import load_text

    return AutoTokenizer.from_pretrained(tokenizer_dir)(load_text()[0]).input_ids


def text_prompts(tokenizer_dir: Path, n: int, length: int, phase: float = 0.0) -> list[list[int]]:
    """`n` prompts (or windows) of `length` tokens spread over the default corpus."""
    from multi_turboquant.eval.corpus import spread_windows

    return spread_windows(corpus_ids(tokenizer_dir), n, length, phase)
