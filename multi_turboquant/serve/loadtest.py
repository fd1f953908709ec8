"""`mtq loadtest`: concurrent streaming requests against an OpenAI-compatible server; throughput and latencies."""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."


@dataclass
class Sample:
    """One request: seconds to the last and to the first token, tokens generated, or the error it got."""

    latency: float
    ttft: float | None
    tokens: int
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100), interpolating linearly between ranks (numpy's default); nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Report:
    samples: list[Sample]
    seconds: float
    concurrency: int

    def rows(self) -> list[tuple[str, str]]:
        ok = [s for s in self.samples if s.error is None]
        failed = len(self.samples) - len(ok)
        tokens = sum(s.tokens for s in ok)

        def spread(values: list[float], scale: float = 1.0) -> str:
            return " / ".join(f"{percentile(values, q) * scale:.3f}" for q in (50, 90, 99))

        decode = [(s.latency - s.ttft) / (s.tokens - 1) for s in ok if s.ttft is not None and s.tokens > 1]
        return [
            ("requests (ok / failed)", f"{len(ok)} / {failed}"),
            ("concurrency", str(self.concurrency)),
            ("wall time (s)", f"{self.seconds:.2f}"),
            ("requests/s", f"{len(ok) / self.seconds:.2f}"),
            ("output tokens/s", f"{tokens / self.seconds:.1f}"),
            ("latency p50 / p90 / p99 (s)", spread([s.latency for s in ok])),
            ("time to first token p50 / p90 / p99 (s)", spread([s.ttft for s in ok if s.ttft is not None])),
            ("time per output token p50 / p90 / p99 (ms)", spread(decode, 1000)),
        ]

    def table(self) -> str:
        lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.rows())]
        errors = sorted({s.error for s in self.samples if s.error})
        return "\n".join(lines + [f"error: {e}" for e in errors])


async def _request(client, model: str, prompt: str, max_tokens: int, chat: bool) -> Sample:
    """One streamed request; tokens from the usage the server reports (else one per text chunk)."""
    start = time.perf_counter()
    ttft = None
    chunks = tokens = 0
    common = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
              "stream_options": {"include_usage": True}, "extra_body": {"ignore_eos": True}}
    try:
        if chat:
            stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and (chunk.choices[0].delta.content if chat else chunk.choices[0].text):
                ttft = time.perf_counter() - start if ttft is None else ttft
                chunks += 1
    except Exception as exc:  # noqa: BLE001 - any failure is counted and reported, not raised
        return Sample(time.perf_counter() - start, ttft, 0, f"{type(exc).__name__}: {exc}")
    return Sample(time.perf_counter() - start, ttft, tokens or chunks)


async def run(url: str, requests: int, concurrency: int, max_tokens: int, model: str | None = None,
              prompt: str = DEFAULT_PROMPT, chat: bool = False, timeout: float = 600.0) -> Report:
    """`requests` streamed requests, `concurrency` at a time; request i's prompt ends with its number."""
    try:
        from openai import AsyncOpenAI
    except ImportError:
        raise ValueError("mtq loadtest needs the openai package (pip install openai)") from None

    client = AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key="none", max_retries=0, timeout=timeout)
    async with client:
        model = model or (await client.models.list()).data[0].id
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> Sample:
            async with gate:
                return await _request(client, model, f"{prompt} ({i})", max_tokens, chat)

        start = time.perf_counter()
        samples = await asyncio.gather(*(one(i) for i in range(requests)))
        return Report(list(samples), time.perf_counter() - start, concurrency)
