"""The server's front door: the API key, the request body size and the number of requests in flight."""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import APIError

DEFAULT_MAX_REQUEST_BYTES = 8 << 20
OPEN_PATHS = ("/health",)  # answered without the key and never refused for load
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Limits:
    """What `Guard` enforces; None: no key, no limit on requests in flight."""

    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_in_flight: int | None = None


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key.lower() == name), None)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large")


class Guard:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <key>` (401), a body of at most
    `max_request_bytes` (413) and a free place among `max_in_flight` requests (429 with Retry-After)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.in_flight = 0
        self._expected = None if limits.api_key is None else f"Bearer {limits.api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            headers = {"Retry-After": str(RETRY_AFTER_S)} if refusal.status == 429 else \
                {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
            await JSONResponse(refusal.body(), refusal.status, headers)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, self._counted(receive), send)
        finally:
            self.in_flight -= 1

    def _refusal(self, scope: Scope) -> APIError | None:
        """Why the request is refused before the app sees it, if it is."""
        if self._expected is not None and not hmac.compare_digest(_header(scope, b"authorization") or b"",
                                                                  self._expected):
            return APIError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                            code="invalid_api_key")
        length = _header(scope, b"content-length")  # uvicorn has checked that it is a number
        if length is not None and int(length) > self.limits.max_request_bytes:
            return _too_large(self.limits.max_request_bytes)
        if self.limits.max_in_flight is not None and self.in_flight >= self.limits.max_in_flight:
            return APIError(429, f"the server is busy ({self.in_flight} requests in flight, its limit); retry "
                            f"after {RETRY_AFTER_S} s", type="server_error", code="too_many_requests")
        return None

    def _counted(self, receive: Receive) -> Receive:
        """`receive` that raises 413 once the body passes the limit (bodies sent without Content-Length)."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limits.max_request_bytes:
                raise _too_large(self.limits.max_request_bytes)
            return message

        return counted
