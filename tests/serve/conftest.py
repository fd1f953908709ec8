"""The `mtq serve` command line for the tests that talk to a server over HTTP (`serving` is in tests/conftest.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SERVED_NAME = "smollm2"
MAX_MODEL_LEN = 1024

# The server subprocess imports vLLM; the tests themselves need not (it takes seconds).
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM")


def mtq_serve(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "multi_turboquant.cli", "serve", "--model", str(model), "--served-model-name",
            SERVED_NAME, "--max-model-len", str(MAX_MODEL_LEN), *args]
