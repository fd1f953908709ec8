"""The API key, body size and in-flight limits of `Guard`, over a small ASGI app (no vLLM)."""
from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from multi_turboquant.serve.cli import api_key, exposure_warning, is_loopback  # noqa: E402
from multi_turboquant.serve.guard import RETRY_AFTER_S, Guard, Limits  # noqa: E402
from multi_turboquant.serve.protocol import APIError  # noqa: E402

KEY = "s3cret"


def make_app(limits: Limits, release: asyncio.Event | None = None) -> FastAPI:
    app = FastAPI()
    app.add_middleware(Guard, limits=limits)
    app.state.entered = 0

    @app.exception_handler(APIError)
    async def error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/echo")
    async def echo(request: Request):
        body = await request.body()
        app.state.entered += 1
        if release is not None:
            await release.wait()
        return {"bytes": len(body)}

    return app


def call(app: FastAPI, *requests: tuple) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            return [await client.request(*r[:2], **(r[2] if len(r) > 2 else {})) for r in requests]

    return asyncio.run(go())


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": KEY},
                                     {"Authorization": f"bearer {KEY}"}, {"Authorization": f"Bearer {KEY} "}])
def test_without_the_key_every_path_but_health_is_401(headers):
    app = make_app(Limits(api_key=KEY))
    health, echo, missing = call(app, ("GET", "/health", {"headers": headers}),
                                 ("POST", "/v1/echo", {"headers": headers, "content": b"x"}),
                                 ("GET", "/nowhere", {"headers": headers}))
    assert health.status_code == 200
    for reply in (echo, missing):
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["code"] == "invalid_api_key" and KEY not in reply.text


def test_with_the_key_requests_pass():
    (reply,) = call(make_app(Limits(api_key=KEY)),
                    ("POST", "/v1/echo", {"headers": {"Authorization": f"Bearer {KEY}"}, "content": b"abc"}))
    assert reply.status_code == 200 and reply.json() == {"bytes": 3}


def test_bodies_past_the_limit_are_413_with_or_without_content_length():
    app = make_app(Limits(max_request_bytes=10))

    async def chunks():
        for _ in range(3):
            yield b"12345"

    at_limit, declared, streamed = call(app, ("POST", "/v1/echo", {"content": b"x" * 10}),
                                        ("POST", "/v1/echo", {"content": b"x" * 11}),
                                        ("POST", "/v1/echo", {"content": chunks()}))
    assert at_limit.status_code == 200
    for reply in (declared, streamed):
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]["code"] == "request_too_large" and "10 bytes" in reply.json()["error"]["message"]


def test_requests_past_the_in_flight_limit_are_429_with_retry_after():
    async def go() -> tuple[list[int], int, int, int]:
        release = asyncio.Event()
        app = make_app(Limits(max_in_flight=2), release)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            held = [asyncio.ensure_future(client.post("/v1/echo", content=b"x")) for _ in range(2)]
            while app.state.entered < 2:  # both inside the app, waiting for `release`
                await asyncio.sleep(0.01)
            busy = await client.post("/v1/echo", content=b"x")
            health = await client.get("/health")
            release.set()
            done = [(await r).status_code for r in held]
            again = await client.post("/v1/echo", content=b"x")
            assert busy.headers["retry-after"] == str(RETRY_AFTER_S)
            assert busy.json()["error"]["code"] == "too_many_requests"
            return done, busy.status_code, health.status_code, again.status_code

    assert asyncio.run(go()) == ([200, 200], 429, 200, 200)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.10", False), ("myhost.lan", False)])
def test_a_server_open_to_the_network_without_a_key_warns(host, loopback):
    assert is_loopback(host) == loopback
    assert (exposure_warning(host, None) is None) == loopback
    assert exposure_warning(host, KEY) is None
    if not loopback:
        assert host in exposure_warning(host, None) and "MTQ_API_KEY" in exposure_warning(host, None)


def test_api_key_from_the_option_else_the_environment(monkeypatch):
    monkeypatch.setenv("MTQ_API_KEY", "from-env")
    assert api_key("given") == "given" and api_key(None) == "from-env"
    monkeypatch.delenv("MTQ_API_KEY")
    assert api_key(None) is None
    for bad in ("", "two words", "caf\u00e9", "tab\tkey"):
        with pytest.raises(ValueError, match="MTQ_API_KEY"):
            api_key(bad)
