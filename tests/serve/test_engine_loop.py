"""EngineLoop over a fake engine: batching, aborts, refusals and a failing engine, without vLLM."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from multi_turboquant.serve.engine_loop import EngineDead, EngineLoop, RequestRefused

STEP_S = 0.005  # a step takes time, as a real one does: requests added meanwhile join the next step


@dataclass
class Output:
    request_id: str
    token: int
    finished: bool


class FakeEngine:
    """Each step gives every running request its next token; a request of `params` tokens then finishes."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.running: dict[str, list[int]] = {}  # request id -> [tokens left, next token]
        self.batch_sizes: list[int] = []
        self.aborted: list[str] = []
        self.fail_at_step = fail_at_step
        self.thread: threading.Thread | None = None

    def add_request(self, request_id: str, prompt: int, params: int) -> None:
        if params < 1:
            raise ValueError("max_tokens must be at least 1")
        self.thread = threading.current_thread()
        self.running[request_id] = [params, prompt]

    def abort_request(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.aborted.append(request_id)
            del self.running[request_id]

    def step(self) -> list[Output]:
        if len(self.batch_sizes) == self.fail_at_step:
            raise RuntimeError("device lost")
        time.sleep(STEP_S)
        self.batch_sizes.append(len(self.running))
        outputs = []
        for request_id, state in list(self.running.items()):
            state[0] -= 1
            state[1] += 1
            outputs.append(Output(request_id, state[1], finished=state[0] == 0))
            if state[0] == 0:
                del self.running[request_id]
        return outputs

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)


@pytest.fixture
def loop_and_engine():
    engine = FakeEngine()
    loop = EngineLoop(engine)
    loop.start()
    yield loop, engine
    loop.stop()


async def tokens(loop: EngineLoop, start: int, n: int) -> list[int]:
    async with loop.generate(start, n) as stream:
        return [output.token async for output in stream]


def test_concurrent_requests_share_steps_and_get_their_own_outputs(loop_and_engine):
    loop, engine = loop_and_engine

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(tokens(loop, 100 * i, 5 + i) for i in range(8)))

    assert asyncio.run(run()) == [list(range(100 * i + 1, 100 * i + 6 + i)) for i in range(8)]
    assert max(engine.batch_sizes) > 1 and engine.thread is loop._thread
    loop.stop()  # the thread updates its counters after handing out the last outputs
    assert (loop.stats.submitted, loop.stats.finished, loop.stats.unfinished) == (8, 8, 0)


def test_leaving_early_aborts_in_the_engine(loop_and_engine):
    loop, engine = loop_and_engine

    async def first_two() -> list[int]:
        async with loop.generate(0, 1000) as stream:
            seen = []
            async for output in stream:
                seen.append(output.token)
                if len(seen) == 2:
                    return seen

    assert asyncio.run(first_two()) == [1, 2]
    loop.stop()
    assert len(engine.aborted) == 1 and not engine.running
    assert (loop.stats.aborted, loop.stats.finished) == (1, 0)


def test_cancelled_task_aborts(loop_and_engine):
    loop, engine = loop_and_engine

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(tokens(loop, 0, 1000))
        while not engine.batch_sizes:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    loop.stop()
    assert len(engine.aborted) == 1 and loop.stats.aborted == 1


def test_refused_request_fails_alone(loop_and_engine):
    loop, _ = loop_and_engine

    async def run() -> list:
        return await asyncio.gather(tokens(loop, 0, 0), tokens(loop, 0, 3), return_exceptions=True)

    refused, ok = asyncio.run(run())
    assert isinstance(refused, RequestRefused) and isinstance(refused.__cause__, ValueError)
    assert ok == [1, 2, 3] and loop.stats.rejected == 1


def test_engine_failure_fails_requests_and_later_ones():
    loop = EngineLoop(FakeEngine(fail_at_step=2))
    loop.start()
    with pytest.raises(EngineDead, match="device lost"):
        asyncio.run(tokens(loop, 0, 10))
    assert not loop.alive and isinstance(loop.error, RuntimeError)
    with pytest.raises(EngineDead):
        asyncio.run(tokens(loop, 0, 1))


def test_shutdown_ends_running_streams_with_its_reason():
    loop = EngineLoop(FakeEngine())
    loop.start()

    async def run() -> list[int]:
        seen = []
        with pytest.raises(EngineDead, match="shutting down"):
            async with loop.generate(0, 1000) as stream:
                async for output in stream:
                    seen.append(output.token)
                    if len(seen) == 2:
                        loop.shutdown()
        return seen

    assert asyncio.run(run())[:2] == [1, 2]
    loop.stop()
    assert not loop.alive
    with pytest.raises(EngineDead, match="shutting down"):
        asyncio.run(tokens(loop, 0, 1))


def test_kv_blocks_are_read_after_each_step_and_abort():
    engine = FakeEngine()
    loop = EngineLoop(engine, kv_blocks=lambda: (len(engine.running), 100))
    loop.start()

    async def first_two() -> list[int]:
        async with loop.generate(0, 1000) as stream:
            async for output in stream:
                if output.token == 2:
                    return [output.token]

    asyncio.run(first_two())
    loop.stop()
    assert (loop.stats.kv_blocks_used, loop.stats.kv_blocks_total, loop.stats.aborted) == (0, 100, 1)
