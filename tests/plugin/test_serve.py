"""`vllm serve --kv-cache-dtype isoquant4` on localhost answers a chat completion through the openai client."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_with_isoquant4(smollm2, tmp_path):
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    cmd = [sys.executable, str(Path(__file__).with_name("vllm_cli.py")), "serve", str(smollm2), "--kv-cache-dtype", "isoquant4",
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--enforce-eager",
           "--served-model-name", "smollm2"]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(model="smollm2", max_tokens=24, temperature=0.0,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        text = reply.choices[0].message.content
        assert "Paris" in text, text
        assert "isoquant4" in (tmp_path / "serve.log").read_text()
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
