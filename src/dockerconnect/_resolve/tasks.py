"""The resolver's background work, and one generic single-flight over it.

Shared fetches and eager caching run in the resolver's own task group, never
in a caller's task: a caller that is cancelled or goes away does not stop the
work the others wait for. :meth:`Tasks.shared` runs one call per key for
every concurrent caller with that key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from dockerconnect._chain import Work, set_current_work, waiting_for, would_deadlock
from dockerconnect._flight import copy_error
from dockerconnect.errors import ConnectorCycle, ResolverClosed

__all__ = ["Tasks"]

T = TypeVar("T")


class _SharedCall(Work, Generic[T]):
    def __init__(self) -> None:
        self.waiting_on = None
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class Tasks:
    """A task group opened and closed with the resolver, and its shared calls."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tg: anyio.abc.TaskGroup | None = None
        self._exit: AsyncExitStack | None = None
        self._calls: dict[tuple[Any, ...], _SharedCall[Any]] = {}
        self._running = 0
        self._idle = anyio.Event()
        self._idle.set()
        #: Commits begun with :meth:`start` and not yet ended, each with the
        #: event it sets when it ends.
        self._commits: set[anyio.Event] = set()

    @property
    def is_open(self) -> bool:
        return self._tg is not None

    async def open(self) -> None:
        if self._tg is not None:
            raise ResolverClosed(f"resolver {self.owner!r} is already open")
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._exit = stack
        self._idle = anyio.Event()
        self._idle.set()

    async def close(self) -> None:
        """Cancel all background work and wait for it to end."""
        assert self._tg is not None
        assert self._exit is not None
        self._tg.cancel_scope.cancel()
        stack, self._exit = self._exit, None
        try:
            await stack.aclose()
        finally:
            self._tg = None
            self._calls.clear()

    def require(self) -> anyio.abc.TaskGroup:
        """The task group; ``ResolverClosed`` outside ``async with``."""
        if self._tg is None:
            raise ResolverClosed(
                f"resolver {self.owner!r} is not open: use it inside 'async with Resolver(...)'"
            )
        return self._tg

    async def wait_idle(self) -> None:
        self.require()
        while self._running:
            await self._idle.wait()

    def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, work: Work | None = None
    ) -> None:
        """Run ``fn(*args)`` in the background; ``work`` is what it is doing (loop detection)."""
        tg = self.require()
        self._running += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

        async def run() -> None:
            set_current_work(work)
            try:
                await fn(*args)
            finally:
                self._running -= 1
                if not self._running:
                    self._idle.set()

        tg.start_soon(run)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background once it has started: ``fn`` takes
        a ``task_status`` keyword and calls its ``started()``. Counted as work,
        and as a commit that :meth:`settled` waits for."""
        tg = self.require()
        self._running += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        ended = anyio.Event()
        self._commits.add(ended)
        entered: list[bool] = []

        def done() -> None:
            self._running -= 1
            if not self._running:
                self._idle.set()
            self._commits.discard(ended)
            ended.set()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            entered.append(True)
            set_current_work(None)
            try:
                await fn(*args, task_status=task_status)
            finally:
                done()

        try:
            await tg.start(run)
        except BaseException:
            if not entered:  # never ran, so never counted itself off
                done()
            raise

    async def settled(self) -> None:
        """``ResolverClosed`` outside ``async with``; else wait until the work
        begun with :meth:`start` (a commit of cached content) before this call
        has ended. Commits begun meanwhile are not waited for, so a steady
        stream of cold pulls cannot keep a push or a listing waiting."""
        self.require()
        for ended in list(self._commits):
            await ended.wait()

    async def shared(self, key: tuple[Any, ...], fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` once, in the background, for every concurrent caller with ``key``."""
        call = self._calls.get(key)
        if call is not None and would_deadlock(call):
            raise ConnectorCycle(
                f"request would wait on itself through {self.owner!r}", connector=self.owner
            )
        if call is None:
            call = _SharedCall()
            self._calls[key] = call
            self.spawn(self._run_shared, key, call, fn, work=call)
        with waiting_for(call):
            await call.done.wait()
        if call.error is not None:
            raise copy_error(call.error)
        return call.result  # type: ignore[return-value]

    async def _run_shared(
        self, key: tuple[Any, ...], call: _SharedCall[Any], fn: Callable[[], Awaitable[Any]]
    ) -> None:
        try:
            call.result = await fn()
        except Exception as exc:  # handed to every waiter
            call.error = exc
        except BaseException:
            call.error = ResolverClosed(f"resolver {self.owner!r} closed")
            raise
        finally:
            self._calls.pop(key, None)
            call.done.set()
