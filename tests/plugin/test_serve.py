"""`vllm serve --kv-cache-dtype isoquant4` on localhost answers a chat completion through the openai client."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")


def test_vllm_serve_with_isoquant4(smollm2, serving, tmp_path):
    cmd = [sys.executable, str(Path(__file__).with_name("vllm_cli.py")), "serve", str(smollm2), "--kv-cache-dtype",
           "isoquant4", "--max-model-len", "1024", "--enforce-eager", "--served-model-name", "smollm2"]
    with serving(cmd, tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.chat.completions.create(model="smollm2", max_tokens=24, temperature=0.0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        text = reply.choices[0].message.content
        assert "Paris" in text, text
        assert "isoquant4" in (tmp_path / "serve.log").read_text()
