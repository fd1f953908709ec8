"""`mtq serve` with room for one running and one queued request: the next gets 429; then SIGTERM during a stream
ends it with a final event, the process exits 0 and frees its port.

This module's server must stop before the shared one of conftest.py starts (two engines would share the CPU): its
name sorts before test_server.py and test_soak.py."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

httpx = pytest.importorskip("httpx")

from .conftest import API_KEY, SERVED_NAME, TIMEOUT_S, mtq_serve, needs_vllm, wait_idle  # noqa: E402

pytestmark = needs_vllm

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"model": SERVED_NAME, "prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True, "stream": True}
SHORT = {"model": SERVED_NAME, "prompt": "Once upon a time", "max_tokens": 1}


@pytest.fixture(scope="module")
def busy_server(smollm2, start_server, tmp_path_factory) -> Iterator[tuple[subprocess.Popen, str]]:
    log = tmp_path_factory.mktemp("serve-busy") / "serve.log"
    process, url = start_server(mtq_serve(smollm2, "--kv-cache-dtype", "auto", "--max-num-seqs", "1",
                                          "--max-queued", "1"), log, {"MTQ_API_KEY": API_KEY})
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait()


def test_a_full_queue_gets_429_and_frees_when_requests_end(busy_server):
    _, url = busy_server
    assert httpx.post(f"{url}/v1/completions", json=SHORT).status_code == 401  # the key came from $MTQ_API_KEY
    with httpx.Client(headers=AUTH, timeout=TIMEOUT_S) as first, \
            httpx.Client(headers=AUTH, timeout=TIMEOUT_S) as second:
        with first.stream("POST", f"{url}/v1/completions", json=LONG) as running, \
                second.stream("POST", f"{url}/v1/completions", json=LONG) as queued:
            assert running.status_code == queued.status_code == 200
            busy = httpx.post(f"{url}/v1/completions", json=SHORT, headers=AUTH, timeout=TIMEOUT_S)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "too_many_requests"
            assert httpx.get(f"{url}/health").status_code == 200
    assert wait_idle(url)["unfinished"] == 0
    reply = httpx.post(f"{url}/v1/completions", json=SHORT, headers=AUTH, timeout=TIMEOUT_S)
    assert reply.status_code == 200, reply.text


def test_sigterm_ends_the_stream_and_exits_cleanly(busy_server):
    process, url = busy_server
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=LONG, headers=AUTH, timeout=TIMEOUT_S) as reply:
        for line in reply.iter_lines():  # ends without an error when the server closes the stream cleanly
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 2:
                    process.send_signal(signal.SIGTERM)
    assert len(events) > 2 and all("choices" in event for event in events[:2])
    assert events[-1]["error"]["code"] == "engine_unavailable" and "shutting down" in events[-1]["error"]["message"]
    assert process.wait(timeout=120) == 0
    socket.create_server(("127.0.0.1", urlsplit(url).port)).close()  # the port is free again
