"""Session-wide test setup; the embedded SmolLM2 and an HTTP-server runner shared by the plugin and server tests."""
import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU-only machines; this must be set before anything
    # (vLLM included) imports triton, so it lives here rather than in tests/kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

SERVER_START_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded SmolLM2-135M-Instruct as a bf16 folder (converted once into ~/.cache/multi-turboquant)."""
    pytest.importorskip("transformers")
    from multi_turboquant.models import default_model

    return default_model()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    with log.open("w") as out:
        server = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT,
                                  env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if server.poll() is not None:
            raise AssertionError(log.read_text()[-4000:])
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return server, url
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise AssertionError("server did not come up") from None
            time.sleep(1)


@contextlib.contextmanager
def _serving(cmd: list[str], log: Path) -> Iterator[str]:
    server, url = _start_server(cmd, log)
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def serving() -> Callable[[list[str], Path], AbstractContextManager[str]]:
    """serving(cmd, log): runs `cmd --host 127.0.0.1 --port PORT` (a free port; VLLM_CPU_KVCACHE_SPACE=1, output
    to `log`) until GET /health answers, yields its root URL, and stops it on exit."""
    return _serving


@pytest.fixture(scope="session")
def start_server() -> Callable[..., tuple[subprocess.Popen, str]]:
    """start_server(cmd, log, env=None): as `serving`, with `env` added to the environment, but returns the process
    and the URL; the caller stops the process."""
    return _start_server


REPORT: list[str] = []


@pytest.fixture(scope="session")
def report() -> Callable[[str], None]:
    """report(line): a line printed in the run's terminal summary (measurements reported, not gated)."""
    return REPORT.append


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORT:
        terminalreporter.section("measurements (reported, not gated)")
        for line in REPORT:
            terminalreporter.write_line(line)
