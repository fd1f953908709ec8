"""A bounded soak of `mtq serve` through `mtq loadtest`'s client: 200 streamed requests, 32 at a time, chat and
completions, with clients that disconnect mid-stream, send malformed or oversized bodies, or a wrong key."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

httpx = pytest.importorskip("httpx")

from multi_turboquant.serve.loadtest import DISCONNECTED, OK, Mix, plan, run  # noqa: E402

from .conftest import API_KEY, MAX_REQUEST_BYTES, needs_vllm, wait_idle  # noqa: E402

pytestmark = needs_vllm

REQUESTS, CONCURRENCY, MAX_TOKENS = 200, 32, 8
MIX = Mix(chat=0.5, disconnect=0.10, malformed=0.05, wrong_key=0.05)
DISTINCT_PROMPTS = 16  # x 2 endpoints: the requests run again alone, one at a time, as the reference
# Greedy texts must equal the reference exactly. Batching changes the server's numerics (the CPU matmuls' order of
# sums depends on the batch), and a quantized KV cache can turn a last-bit difference into another code, so a
# near-tie between two tokens can flip. Prompts with clear continuations, on the float32 server, keep every text
# equal (docs/serve.md, soak, has the counts for other prompts and for bfloat16).
PROMPT = "Continue the sequence: {i}1, {i}2, {i}3, {i}4,"
RSS_GROWTH_BOUND = 128 << 20  # measured 57 MiB over the soak (docs/serve.md, soak)


def health(server: str) -> dict:
    return httpx.get(f"{server}/health").json()


def test_soak(server, report):
    plans = plan(REQUESTS, MIX, PROMPT, distinct=DISTINCT_PROMPTS, seed=1)
    alone = sorted({p for p in plans if p.kind == OK}, key=lambda p: (p.chat, p.prompt))
    start = time.monotonic()
    reference = asyncio.run(run(server, alone, 1, MAX_TOKENS, api_key=API_KEY))
    assert not reference.errors()
    expected = {sample.plan: sample.text for sample in reference.samples}
    idle = wait_idle(server)
    rss_before = health(server)["rss_bytes"]

    soak = asyncio.run(run(server, plans, CONCURRENCY, MAX_TOKENS, api_key=API_KEY,
                           oversized_bytes=MAX_REQUEST_BYTES + 4096))
    assert not soak.errors(), soak.table()
    outcomes = Counter((s.plan.kind, s.outcome.split(" ")[0]) for s in soak.samples)
    assert outcomes[OK, OK] == REQUESTS * (1 - MIX.disconnect - MIX.malformed - MIX.wrong_key)
    assert outcomes["wrong_key", "401"] == REQUESTS * MIX.wrong_key
    assert outcomes["malformed", "400"] + outcomes["malformed", "413"] == REQUESTS * MIX.malformed
    assert outcomes["malformed", "413"] > 0
    assert outcomes["disconnect", DISCONNECTED] + outcomes["disconnect", OK] == REQUESTS * MIX.disconnect
    wrong = [(s.plan, s.text, expected[s.plan]) for s in soak.samples if s.outcome == OK and s.plan.kind == OK
             and s.text != expected[s.plan]]
    assert not wrong, wrong

    after = wait_idle(server)
    body = health(server)
    assert body["status"] == "ok" and after["unfinished"] == 0
    assert after["kv_blocks_total"] > 0 and after["kv_blocks_used"] == idle["kv_blocks_used"] == 0
    admitted = after["submitted"] - idle["submitted"]
    assert admitted == outcomes[OK, OK] + sum(n for (kind, _), n in outcomes.items() if kind == "disconnect")
    assert after["finished"] - idle["finished"] + after["aborted"] - idle["aborted"] == admitted
    assert 0 < after["aborted"] - idle["aborted"] <= outcomes["disconnect", DISCONNECTED]
    growth = body["rss_bytes"] - rss_before
    report(f"soak: {REQUESTS} requests ({dict(Counter(s.outcome for s in soak.samples))}, "
           f"{after['aborted'] - idle['aborted']} aborted in the engine) in {soak.seconds:.1f} s, "
           f"reference {len(alone)} alone in {reference.seconds:.1f} s, test {time.monotonic() - start:.1f} s; "
           f"RSS {rss_before / 2**20:.0f} -> {body['rss_bytes'] / 2**20:.0f} MiB; "
           f"KV blocks used {idle['kv_blocks_used']} -> {after['kv_blocks_used']} of {after['kv_blocks_total']}")
    assert growth < RSS_GROWTH_BOUND, growth
