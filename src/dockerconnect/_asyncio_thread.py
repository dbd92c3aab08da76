"""An asyncio event loop in a thread of its own, for clients that only run on asyncio.

aiobotocore (over aiohttp) and redis-py's asyncio client are asyncio-only:
under trio they fail at their first ``await``. The S3 and Redis backends
therefore keep their client on a private asyncio loop running in a daemon
thread, and every call crosses over to it and back. The caller's task waits
without holding a worker thread (the loop thread wakes it through its own
event loop's thread-safe entry point), so the same store works unchanged on
asyncio and trio, and on both the caller's loop is never blocked by the
client's I/O.

Cancelling a caller cancels the call on the loop thread and waits for it to
unwind, so a client's cleanup (closing a response, aborting an upload) has
finished when the caller sees the cancellation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

__all__ = ["AsyncioThread"]

T = TypeVar("T")


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A thread-safe function that sets ``event`` on the caller's event loop."""
    native: Any = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        schedule = native.call_soon_threadsafe
    else:
        schedule = native.run_sync_soon  # a trio.lowlevel.TrioToken

    def wake() -> None:
        try:
            schedule(event.set)
        except Exception:
            pass  # the caller's loop has ended: nobody is waiting any more

    return wake


class AsyncioThread:
    """One asyncio event loop in a daemon thread, started on first use.

    :meth:`run` runs a coroutine function there and returns its result to
    the calling task, whatever its anyio backend. :meth:`aclose` stops the
    loop; the thread is a daemon, so a process that never closes it still
    exits.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._main, args=(loop,), name=self.name, daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def started(self) -> bool:
        """Whether the loop thread is running."""
        return self._loop is not None and not self._closed

    async def run(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``await func(*args)`` on the loop thread; its result or its exception."""
        loop = self._ensure_loop()
        done = anyio.Event()
        wake = _waker(done)
        # Written on the loop thread before ``wake`` runs, read here after it.
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(func(*args))
            # A done callback fires however the task ends, even if it is
            # cancelled before its first step.
            task.add_done_callback(lambda _: wake())
            tasks.append(task)

        def cancel() -> None:
            tasks[0].cancel()

        loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except BaseException:
            # Cancelled (or interrupted): cancel the call over there and wait
            # until it has unwound, so its cleanup is over when we move on.
            # ``start`` ran before ``cancel``: the loop runs callbacks in order.
            loop.call_soon_threadsafe(cancel)
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
        task = tasks[0]
        if task.cancelled():
            raise RuntimeError(f"the call was cancelled on {self.name}'s loop")
        return task.result()

    async def aclose(self, cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run ``cleanup`` on the loop (if it ever started), then stop the loop.

        Safe to call more than once; later :meth:`run` calls raise ``RuntimeError``.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._closed:
            self._closed = True
            return
        try:
            if cleanup is not None:
                with anyio.CancelScope(shield=True):
                    await self.run(cleanup)
        finally:
            with self._lock:
                self._closed = True
            loop.call_soon_threadsafe(loop.stop)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._loop is not None else "idle"
        return f"AsyncioThread({self.name!r}, {state})"
