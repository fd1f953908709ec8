"""One thread drives an in-process vLLM engine for all requests; asyncio handlers talk to it through queues.

Handlers call `EngineLoop.generate(...)` (an async context manager yielding a `RequestStream`). Adds and aborts go
to the engine thread through a thread-safe command queue; the thread applies them between `engine.step()` calls,
so every running request shares each step (continuous batching), and hands each step's outputs to the
requests' asyncio queues with one `loop.call_soon_threadsafe` per event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    """The engine thread stopped (an engine error or shutdown); no request can be served."""


class RequestRefused(Exception):
    """vLLM's add_request refused a request; `__cause__` is its error."""


@dataclass
class EngineStats:
    """Counters kept by the engine thread (read from others without locking: plain ints)."""

    submitted: int = 0
    finished: int = 0
    aborted: int = 0
    rejected: int = 0
    unfinished: int = 0  # requests the engine still holds, after the last step or command
    steps: int = 0
    kv_blocks_used: int = 0  # KV cache blocks held by requests, after the last step or command (0: not read)
    kv_blocks_total: int = 0


@dataclass
class _Add:
    request_id: str
    prompt: Any
    params: Any
    outputs: asyncio.Queue
    accepted: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class _Abort:
    request_id: str


class _Stop:
    pass


@dataclass
class RequestStream:
    """The outputs of one request, in order; iteration ends after the finished output."""

    request_id: str
    _outputs: asyncio.Queue
    finished: bool = field(default=False, init=False)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while not self.finished:
            item = await self._outputs.get()
            if isinstance(item, BaseException):
                raise item
            self.finished = item.finished
            yield item


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for outputs, item in items:
        outputs.put_nowait(item)


class EngineLoop:
    """Owns `engine` (vLLM's v1 LLMEngine or anything with its add_request/abort_request/step API) in one thread;
    `kv_blocks` (called by that thread) reads its KV cache's blocks in use and in all."""

    def __init__(self, engine: Any, name: str = "mtq-engine",
                 kv_blocks: Callable[[], tuple[int, int]] | None = None) -> None:
        self.engine = engine
        self._kv_blocks = kv_blocks
        self.stats = EngineStats()
        self.error: BaseException | None = None
        self._commands: queue.SimpleQueue[_Add | _Abort | _Stop] = queue.SimpleQueue()
        self._running: dict[str, _Add] = {}
        self._closed = False  # set, under _gate, by the engine thread as it ends: no command is taken after
        self._stopping = False
        self._gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Ask the thread to finish its step, fail the remaining requests (EngineDead) and end; returns at once."""
        self._stopping = True
        self._commands.put(_Stop())

    def stop(self, timeout: float = 30.0) -> None:
        """`shutdown()` and wait for the thread to end."""
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @contextlib.asynccontextmanager
    async def generate(self, prompt: Any, params: Any, request_id: str | None = None
                       ) -> AsyncIterator[RequestStream]:
        """Add a request; yields its stream once the engine accepted it (add_request's errors are raised here).

        Raises RequestRefused or EngineDead. Leaving the block before the last output (an error, a cancelled task,
        a client gone) aborts the request in the engine.
        """
        loop = asyncio.get_running_loop()
        add = _Add(request_id or uuid.uuid4().hex, prompt, params, asyncio.Queue(), loop.create_future(), loop)
        stream = RequestStream(add.request_id, add.outputs)
        with self._gate:
            if not self.alive:
                raise self._dead()
            self._commands.put(add)
        try:
            await add.accepted
            yield stream
        finally:
            if not stream.finished:
                self._commands.put(_Abort(add.request_id))

    def _dead(self) -> EngineDead:
        if self.error is not None:
            return EngineDead(f"the engine failed: {self.error!r}")
        return EngineDead("the server is shutting down" if self._stopping else "the engine is not running")

    # --- the engine thread ---

    def _run(self) -> None:
        try:
            self._count()
            while True:
                idle = not self._running
                if not self._apply(self._commands.get() if idle else None):
                    self._count()  # the commands applied before the stop (an abort frees blocks) show in stats
                    return
                if self._running:
                    self._dispatch(self.engine.step())
                    self.stats.steps += 1
                self._count()
        except BaseException as exc:  # the engine is unusable after a failed step
            self.error = exc
            logger.exception("the engine failed; failing every request")
        finally:
            self._fail_all(self._dead())

    def _count(self) -> None:
        """The engine's requests and KV blocks, into `stats`."""
        self.stats.unfinished = self.engine.get_num_unfinished_requests()
        if self._kv_blocks is not None:
            self.stats.kv_blocks_used, self.stats.kv_blocks_total = self._kv_blocks()

    def _apply(self, first: _Add | _Abort | _Stop | None) -> bool:
        """Apply `first` and every queued command; False on _Stop."""
        commands = [] if first is None else [first]
        with contextlib.suppress(queue.Empty):
            while True:
                commands.append(self._commands.get_nowait())
        for command in commands:
            if isinstance(command, _Stop):
                return False
            if isinstance(command, _Add):
                self._add(command)
            elif self._running.pop(command.request_id, None) is not None:
                self.engine.abort_request([command.request_id])
                self.stats.aborted += 1
        return True

    def _add(self, add: _Add) -> None:
        try:
            self.engine.add_request(add.request_id, add.prompt, add.params)
        except Exception as exc:  # a request vLLM refuses (too long, bad token ids, ...) fails alone
            self.stats.rejected += 1
            refused = RequestRefused(str(exc))
            refused.__cause__ = exc
            self._post(add.loop, _resolve, add.accepted, refused)
            return
        self._running[add.request_id] = add
        self.stats.submitted += 1
        self._post(add.loop, _resolve, add.accepted, None)

    def _dispatch(self, outputs: Iterable[Any]) -> None:
        """Queue each output to its request, one callback per event loop."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = defaultdict(list)
        for output in outputs:
            add = self._running.get(output.request_id)
            if add is None:  # aborted after this step began
                continue
            if output.finished:
                del self._running[output.request_id]
                self.stats.finished += 1
            batches[add.loop].append((add.outputs, output))
        for loop, items in batches.items():
            self._post(loop, _deliver, items)

    def _post(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on `loop`; if that loop is closed, nobody reads its requests: abort them."""
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            gone = [request_id for request_id, add in self._running.items() if add.loop is loop]
            for request_id in gone:
                del self._running[request_id]
            if gone:
                self.engine.abort_request(gone)
                self.stats.aborted += len(gone)

    def _fail_all(self, error: BaseException) -> None:
        pending = [*self._running.values()]
        with self._gate, contextlib.suppress(queue.Empty):
            self._closed = True
            while True:
                command = self._commands.get_nowait()
                if isinstance(command, _Add):
                    pending.append(command)
        self._running.clear()
        for add in pending:
            with contextlib.suppress(RuntimeError):  # that request's event loop is closed already
                add.loop.call_soon_threadsafe(_resolve, add.accepted, error)
                add.loop.call_soon_threadsafe(add.outputs.put_nowait, error)
