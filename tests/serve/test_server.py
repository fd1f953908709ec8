"""`mtq serve --kv-cache-dtype isoquant4` with SmolLM2 on vLLM's CPU build, through the openai client and httpx."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from .conftest import API_KEY, MAX_MODEL_LEN, MAX_REQUEST_BYTES, SERVED_NAME, TIMEOUT_S, engine_stats, \
    needs_vllm, wait_idle  # noqa: E402

pytestmark = needs_vllm

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, timeout=TIMEOUT_S, max_retries=0)


def counting_prompt(k: int) -> str:
    return f"{k}, {k + 1}, {k + 2}, {k + 3},"


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]
    body = httpx.get(f"{server}/health").json()
    assert body["status"] == "ok" and body["model"] == SERVED_NAME


def test_completion_streamed_and_not(client):
    kwargs = {"model": SERVED_NAME, "prompt": counting_prompt(1), "max_tokens": 6, "temperature": 0.0}
    reply = client.completions.create(**kwargs)
    assert reply.choices[0].text.startswith(" 5, 6")
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
    assert {c.id for c in chunks} == {chunks[0].id}


def test_chat_streamed_and_not(client):
    kwargs = {"model": SERVED_NAME, "messages": QUESTION, "max_tokens": 12, "temperature": 0.0}
    reply = client.chat.completions.create(**kwargs)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_concurrent_streams_are_complete_and_unmixed(server):
    """16 streams and the same 16 prompts unstreamed, all at once: each stream equals its prompt's greedy text."""
    prompts = [counting_prompt(k) for k in range(10, 170, 10)]
    aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=API_KEY, timeout=TIMEOUT_S, max_retries=0)
    common = {"model": SERVED_NAME, "max_tokens": 6, "temperature": 0.0}

    async def streamed(prompt: str) -> tuple[set[str], str]:
        chunks = [c async for c in await aclient.completions.create(prompt=prompt, stream=True, **common)]
        return {c.id for c in chunks}, "".join(c.choices[0].text for c in chunks)

    async def whole(prompt: str) -> str:
        return (await aclient.completions.create(prompt=prompt, **common)).choices[0].text

    async def run_all() -> tuple[list, list]:
        async with aclient:
            return await asyncio.gather(asyncio.gather(*map(streamed, prompts)), asyncio.gather(*map(whole, prompts)))

    before = engine_stats(server)
    streams, texts = asyncio.run(run_all())
    assert [text for _, text in streams] == texts
    for k, text in zip(range(10, 170, 10), texts, strict=True):
        assert text.startswith(f" {k + 4},"), (k, text)
    ids = [i for i, _ in streams]
    assert all(len(i) == 1 for i in ids) and len(set.union(*ids)) == len(prompts)
    after = wait_idle(server)
    assert after["finished"] - before["finished"] == 2 * len(prompts) and after["aborted"] == before["aborted"]


def test_disconnect_mid_stream_aborts(server, client):
    before = engine_stats(server)
    body = {"model": SERVED_NAME, "prompt": "Once upon a time", "max_tokens": 900, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, headers=AUTH, timeout=TIMEOUT_S) as reply:
        events = (line for line in reply.iter_lines() if line.startswith("data: "))
        next(events), next(events)
    after = wait_idle(server)
    assert after["aborted"] == before["aborted"] + 1 and after["finished"] == before["finished"]
    assert after["unfinished"] == 0
    reply = client.completions.create(model=SERVED_NAME, prompt=counting_prompt(1), max_tokens=2, temperature=0.0)
    assert reply.choices[0].text.startswith(" 5")


def test_disconnect_while_waiting_for_a_whole_completion_aborts(server):
    before = engine_stats(server)
    body = {"model": SERVED_NAME, "prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=3.0)
    after = wait_idle(server)
    assert after["aborted"] == before["aborted"] + 1 and after["unfinished"] == 0


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b'{"model": "smollm2", "prompt": "caf\xe9"}', 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b" " * (MAX_REQUEST_BYTES + 1), 413, None),
    ("/v1/completions", {"model": SERVED_NAME}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi"}, 400, "model"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": 7}, 400, "prompt"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "max_tokens": "8"}, 400, "max_tokens"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi " * 2 * MAX_MODEL_LEN}, 400, "prompt"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "n": 2}, 400, "n"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "logprobs": 1}, 400, "logprobs"),
    ("/v1/completions", {"model": SERVED_NAME, "prompt": [10 ** 9]}, 400, None),
    ("/v1/chat/completions", {"model": SERVED_NAME, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": SERVED_NAME, "messages": [{"role": "robot", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("/v1/chat/completions", {"model": SERVED_NAME, "messages": QUESTION, "stream": "yes"}, 400, "stream"),
    ("/v1/embeddings", {"model": SERVED_NAME, "input": "hi"}, 400, "model"),
    ("/v1/nowhere", {}, 404, None),
])
def test_malformed_requests_get_openai_errors(server, path, body, status, param):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    reply = httpx.post(f"{server}{path}", headers=AUTH, timeout=TIMEOUT_S, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_prompt_past_the_context_names_both_lengths(server):
    body = {"model": SERVED_NAME, "prompt": list(range(5, 5 + MAX_MODEL_LEN + 7))}
    reply = httpx.post(f"{server}/v1/completions", json=body, headers=AUTH, timeout=TIMEOUT_S)
    assert reply.status_code == 400
    message = reply.json()["error"]["message"]
    assert f"{MAX_MODEL_LEN} tokens" in message and f"{MAX_MODEL_LEN + 7} tokens" in message


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": f"Basic {API_KEY}"}])
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                          ("POST", "/v1/chat/completions"), ("GET", "/v1/nowhere")])
def test_every_path_but_health_needs_the_key(server, server_log, headers, method, path):
    body = {"model": SERVED_NAME, "prompt": "hi", "messages": QUESTION, "max_tokens": 1}
    reply = httpx.request(method, f"{server}{path}", json=body, headers=headers, timeout=TIMEOUT_S)
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "invalid_api_key" and reply.headers["www-authenticate"] == "Bearer"
    assert API_KEY not in reply.text
    assert httpx.get(f"{server}/health").status_code == 200
    assert API_KEY not in server_log.read_text()


def test_openai_client_raises_on_unknown_model(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=1)


def test_loadtest_command(server):
    out = subprocess.run([sys.executable, "-m", "multi_turboquant.cli", "loadtest", "--url", server, "--requests", "4",
                          "--concurrency", "2", "--max-tokens", "4"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MTQ_API_KEY": API_KEY})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| requests (ok / failed) | 4 / 0 |" in out.stdout and "| outcome: ok | 4 |" in out.stdout
    for row in ("completed requests/s", "output tokens/s", "latency p50 / p90 / p99", "time to first token"):
        assert f"| {row}" in out.stdout
