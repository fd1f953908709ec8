"""uvicorn with a graceful stop: on SIGINT/SIGTERM the engine ends every request, so streams close at once."""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.server import HANDLED_SIGNALS

from .engine_loop import EngineLoop

GRACE_S = 10.0  # then uvicorn cancels what still runs


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: EngineLoop) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop accepting (uvicorn) and end the running requests: streams get a final error event and close."""
        self.engine.shutdown()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, without raising the signal again once stopped: a graceful stop exits with status 0."""
        handlers = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def run(app: FastAPI, engine: EngineLoop, host: str, port: int, log_level: str) -> None:
    """Serve `app` (which runs `engine`) until SIGINT or SIGTERM."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACE_S)
    _Server(config, engine).run()
