"""`mtq loadtest`: concurrent streaming requests against an OpenAI-compatible server, with an optional mix of faulty
clients (disconnecting mid-stream, malformed or oversized bodies, a wrong API key); throughput, latencies and
outcomes by kind."""
from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."
DEFAULT_OVERSIZED_BYTES = 9 << 20  # past `mtq serve`'s default --max-request-bytes
KINDS = ("ok", "disconnect", "malformed", "wrong_key")
# what each kind of request should get: its outcome (OK, DISCONNECTED or an HTTP status); anything else is an error
OK, DISCONNECTED = "ok", "disconnected"
MALFORMED = ("invalid JSON", "invalid UTF-8", "prompt past the context", "body past the size limit")


@dataclass(frozen=True)
class Mix:
    """Fractions of the requests: chat (the others are completions), and each fault."""

    chat: float = 0.0
    disconnect: float = 0.0
    malformed: float = 0.0
    wrong_key: float = 0.0

    def __post_init__(self) -> None:
        fractions = {"chat": self.chat, "disconnect": self.disconnect, "malformed": self.malformed,
                     "wrong key": self.wrong_key}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise ValueError(f"the {name} fraction must be between 0 and 1 (got {value})")
        if self.disconnect + self.malformed + self.wrong_key > 1:
            raise ValueError("the fault fractions add up to more than 1")


@dataclass(frozen=True)
class Plan:
    """One request: its kind (KINDS), endpoint and prompt; `variant` picks a malformed body (MALFORMED)."""

    kind: str
    chat: bool
    prompt: str
    variant: int = 0


def plan(requests: int, mix: Mix, prompt: str = DEFAULT_PROMPT, distinct: int | None = None,
         seed: int = 0) -> list[Plan]:
    """`requests` plans, each fault and chat on round(fraction x requests) of them, in a shuffled order (`seed`);
    request i's prompt is `prompt` with `{i}` replaced by i mod `distinct`, or without `{i}`, that number appended
    in parentheses."""
    counts = [round(f * requests) for f in (mix.disconnect, mix.malformed, mix.wrong_key)]
    kinds = [kind for kind, n in zip(KINDS[1:], counts) for _ in range(n)]
    kinds += [OK] * (requests - len(kinds))
    chats = [True] * round(mix.chat * requests) + [False] * (requests - round(mix.chat * requests))
    rng = random.Random(seed)
    rng.shuffle(kinds)
    rng.shuffle(chats)
    variants = itertools.count()
    numbered = prompt if "{i}" in prompt else prompt + " ({i})"
    return [Plan(kind, chat, numbered.replace("{i}", str(i % (distinct or requests))),
                 next(variants) % len(MALFORMED) if kind == "malformed" else 0)
            for i, (kind, chat) in enumerate(zip(kinds, chats))]


@dataclass
class Sample:
    """One request: seconds to the end and to the first text, tokens and text generated, what it got (`outcome`:
    OK, DISCONNECTED, or an HTTP status and error code), and why that is wrong for its plan (`error`)."""

    latency: float
    ttft: float | None
    tokens: int
    error: str | None = None
    outcome: str = OK
    text: str = ""
    plan: Plan | None = None


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
        ok = [s for s in self.samples if s.error is None and s.outcome == OK]
        failed = sum(s.error is not None for s in self.samples)
        tokens = sum(s.tokens for s in ok)

        def spread(values: list[float], scale: float = 1.0) -> str:
            return " / ".join(f"{percentile(values, q) * scale:.3f}" for q in (50, 90, 99))

        decode = [(s.latency - s.ttft) / (s.tokens - 1) for s in ok if s.ttft is not None and s.tokens > 1]
        outcomes = Counter(s.outcome for s in self.samples if s.error is None)
        return [
            ("requests (ok / failed)", f"{len(self.samples) - failed} / {failed}"),
            *((f"outcome: {outcome}", str(n)) for outcome, n in sorted(outcomes.items())),
            ("concurrency", str(self.concurrency)),
            ("wall time (s)", f"{self.seconds:.2f}"),
            ("completed requests/s", f"{len(ok) / self.seconds:.2f}"),
            ("output tokens/s", f"{tokens / self.seconds:.1f}"),
            ("latency p50 / p90 / p99 (s)", spread([s.latency for s in ok])),
            ("time to first token p50 / p90 / p99 (s)", spread([s.ttft for s in ok if s.ttft is not None])),
            ("time per output token p50 / p90 / p99 (ms)", spread(decode, 1000)),
        ]

    def errors(self) -> Counter[str]:
        """Unexpected results, by kind of request and what it got."""
        return Counter(f"{s.plan.kind if s.plan else OK} request: {s.error}" for s in self.samples if s.error)

    def table(self) -> str:
        lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in self.rows())]
        return "\n".join(lines + [f"error ({n}x): {e}" for e, n in sorted(self.errors().items())])


@dataclass
class _Client:
    """Sends planned requests to one server; `model` and `max_model_len` as /v1/models reports them."""

    http: Any  # httpx.AsyncClient
    model: str
    max_tokens: int
    max_model_len: int | None
    api_key: str | None
    oversized_bytes: int
    _headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self._headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, p: Plan) -> bytes:
        """The request's body: valid JSON, or for a malformed request the variant its plan names."""
        prompt = p.prompt
        if p.kind == "malformed" and MALFORMED[p.variant] == "prompt past the context":
            prompt = "hi " * ((self.max_model_len or 100_000) + 1)
        text = {"messages": [{"role": "user", "content": prompt}]} if p.chat else {"prompt": prompt}
        body = json.dumps({"model": self.model, **text, "max_tokens": self.max_tokens, "temperature": 0.0,
                           "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}).encode()
        if p.kind != "malformed":
            return body
        padded = body + b" " * max(0, self.oversized_bytes - len(body))
        return {"invalid JSON": body[:-1], "invalid UTF-8": body.replace(b'"model"', b'"mod\xffel"'),
                "prompt past the context": body, "body past the size limit": padded}[MALFORMED[p.variant]]

    async def send(self, p: Plan) -> Sample:
        """One streamed request; tokens from the usage the server reports (else one per text chunk)."""
        headers = {"Authorization": "Bearer wrong-key"} if p.kind == "wrong_key" else self._headers
        start = time.perf_counter()
        sample = Sample(0.0, None, 0, plan=p)
        try:
            async with self.http.stream("POST", "/v1/chat/completions" if p.chat else "/v1/completions",
                                        content=self.body(p), headers={**headers, "Content-Type": "application/json"}
                                        ) as reply:
                if reply.status_code != 200:
                    await reply.aread()
                    sample.outcome = f"{reply.status_code} {_error(reply.content).get('code')}"
                else:
                    sample.outcome = await self._read(reply, p, sample, start)
        except Exception as exc:  # noqa: BLE001 - any failure is counted and reported, not raised
            sample.outcome = f"{type(exc).__name__}: {exc}"
        sample.latency = time.perf_counter() - start
        expected = {OK: (OK,), "disconnect": (DISCONNECTED, OK), "malformed": ("400", "413"),
                    "wrong_key": ("401",)}[p.kind]
        if not sample.outcome.startswith(expected):
            sample.error = sample.outcome
        return sample

    @staticmethod
    async def _read(reply: Any, p: Plan, sample: Sample, start: float) -> str:
        """Read the event stream into `sample`; its outcome (a disconnecting client leaves after its first text)."""
        chunks = 0
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                sample.tokens = sample.tokens or chunks
                return OK
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                return f"stream error {event['error'].get('code')}: {event['error'].get('message')}"
            if event.get("usage"):
                sample.tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                piece = (choice.get("delta", {}).get("content") if p.chat else choice.get("text")) or ""
                if piece:
                    sample.ttft = time.perf_counter() - start if sample.ttft is None else sample.ttft
                    sample.text += piece
                    chunks += 1
            if p.kind == "disconnect" and sample.text:
                return DISCONNECTED
        return "the stream ended without [DONE]"


def _error(body: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI error body (empty if the body is not one)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


async def run(url: str, plans: Sequence[Plan], concurrency: int, max_tokens: int, model: str | None = None,
              api_key: str | None = None, oversized_bytes: int = DEFAULT_OVERSIZED_BYTES,
              timeout: float = 600.0) -> Report:
    """Send `plans`, `concurrency` at a time, each for `max_tokens` tokens (greedy, ignoring EOS)."""
    try:
        import httpx
    except ImportError:
        raise ValueError("mtq loadtest needs the httpx package (pip install httpx)") from None

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        try:
            reply = await http.get("/v1/models", headers=headers)
        except httpx.HTTPError as exc:
            raise ValueError(f"cannot reach {url}: {exc}") from None
        if reply.status_code != 200:
            raise ValueError(f"{url}/v1/models answered {reply.status_code}: "
                             f"{_error(reply.content).get('message', reply.text)}")
        served = reply.json()["data"][0]
        client = _Client(http, model or served["id"], max_tokens, served.get("max_model_len"), api_key,
                         oversized_bytes)
        gate = asyncio.Semaphore(concurrency)

        async def one(p: Plan) -> Sample:
            async with gate:
                return await client.send(p)

        start = time.perf_counter()
        samples = await asyncio.gather(*map(one, plans))
        return Report(list(samples), time.perf_counter() - start, concurrency)
