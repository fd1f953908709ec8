"""The `mtq serve` command line and the server shared by the tests that talk to it over HTTP (`serving` is in
tests/conftest.py)."""
from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVED_NAME = "smollm2"
MAX_MODEL_LEN = 1024
API_KEY = "test-key-7f3a9c"
MAX_REQUEST_BYTES = 65536
TIMEOUT_S = 300.0

# The server subprocess imports vLLM; the tests themselves need not (it takes seconds).
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM")


def mtq_serve(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "multi_turboquant.cli", "serve", "--model", str(model), "--served-model-name",
            SERVED_NAME, "--max-model-len", str(MAX_MODEL_LEN), *args]


@pytest.fixture(scope="package")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="package")  # stopped when tests/serve is done, before other packages' tests start servers
def server(smollm2, serving, server_log) -> Iterator[str]:
    """`mtq serve --kv-cache-dtype isoquant4` with SmolLM2 in float32 (test_soak.py says why), an API key and a
    64 KiB body limit, for test_server.py and test_soak.py; modules with a server of their own sort before them."""
    with serving(mtq_serve(smollm2, "--kv-cache-dtype", "isoquant4", "--dtype", "float32", "--api-key", API_KEY,
                           "--max-request-bytes", str(MAX_REQUEST_BYTES)), server_log) as url:
        yield url


def engine_stats(server: str) -> dict[str, int]:
    import httpx

    reply = httpx.get(f"{server}/health")
    assert reply.status_code == 200
    return reply.json()["engine"]


def wait_idle(server: str, timeout: float = 60.0) -> dict[str, int]:
    """The engine's counters once it holds no request (the abort reaches it between two steps)."""
    deadline = time.monotonic() + timeout
    while (stats := engine_stats(server))["unfinished"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return stats
