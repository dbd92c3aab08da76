"""The asyncio loop thread the S3 and Redis backends run their clients on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import pytest

import dockerconnect.redis
import dockerconnect.s3
from dockerconnect._asyncio_thread import AsyncioThread


@pytest.fixture
async def loop_thread() -> AsyncIterator[AsyncioThread]:
    thread = AsyncioThread("test-loop")
    yield thread
    await thread.aclose()


@pytest.mark.anyio
async def test_runs_on_its_own_asyncio_loop(loop_thread: AsyncioThread) -> None:
    async def where() -> tuple[str, bool]:
        await asyncio.sleep(0)
        return threading.current_thread().name, isinstance(
            asyncio.get_running_loop(), asyncio.AbstractEventLoop
        )

    assert await loop_thread.run(where) == ("test-loop", True)
    assert loop_thread.started


@pytest.mark.anyio
async def test_exceptions_come_back_as_themselves(loop_thread: AsyncioThread) -> None:
    class Boom(Exception):
        pass

    boom = Boom("over there")

    async def fail() -> None:
        raise boom

    with pytest.raises(Boom) as info:
        await loop_thread.run(fail)
    assert info.value is boom


@pytest.mark.anyio
async def test_waiting_holds_no_worker_thread(loop_thread: AsyncioThread) -> None:
    # Ten calls that can only finish together: if each held a worker thread
    # (two allowed here), they would never all start.
    limiter = anyio.to_thread.current_default_thread_limiter()
    tokens, limiter.total_tokens = limiter.total_tokens, 2
    arrived = 0
    everyone: list[asyncio.Event] = []

    async def meet() -> None:
        nonlocal arrived
        if not everyone:
            everyone.append(asyncio.Event())
        arrived += 1
        if arrived == 10:
            everyone[0].set()
        await everyone[0].wait()

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(loop_thread.run, meet)
    finally:
        limiter.total_tokens = tokens
    assert arrived == 10


@pytest.mark.anyio
async def test_cancelling_the_caller_cancels_the_call_and_waits_for_its_cleanup(
    loop_thread: AsyncioThread,
) -> None:
    started, cleaned = threading.Event(), threading.Event()

    async def body() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while
            cleaned.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop_thread.run, body)
            await anyio.to_thread.run_sync(started.wait)
            tg.cancel_scope.cancel()
    assert cleaned.is_set()


@pytest.mark.anyio
async def test_closed() -> None:
    thread = AsyncioThread("closing")
    await thread.aclose()  # never started: nothing to stop
    thread = AsyncioThread("closing")

    async def one() -> int:
        return 1

    assert await thread.run(one) == 1
    cleaned: list[bool] = []

    async def cleanup() -> None:
        cleaned.append(True)

    await thread.aclose(cleanup)
    await thread.aclose(cleanup)
    assert cleaned == [True]
    assert not thread.started
    with pytest.raises(RuntimeError, match="closed"):
        await thread.run(one)
    assert "closing" not in {t.name for t in threading.enumerate()}


def test_public_names() -> None:
    assert dockerconnect.s3.__all__ == ["MIN_PART_SIZE", "S3BlobStore"]
    assert dockerconnect.redis.__all__ == [
        "FetchLease",
        "RedisFetchCoordinator",
        "RedisManifestStore",
        "WaitOutcome",
    ]


def test_one_thread_serves_callers_on_both_backends_in_turn() -> None:
    thread = AsyncioThread("both")

    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    async def caller(n: int) -> int:
        return await thread.run(double, n)

    try:
        assert anyio.run(caller, 1, backend="asyncio") == 2
        assert anyio.run(caller, 2, backend="trio") == 4
        assert anyio.run(caller, 3, backend="asyncio") == 6
    finally:
        anyio.run(thread.aclose)
