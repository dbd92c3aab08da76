"""Two awaitables side by side, with the first error raised as it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["together"]


async def together(
    main: Callable[[], Awaitable[None]], beside: Callable[[], Awaitable[None]]
) -> None:
    """Run ``beside`` in a task while ``main`` runs here; wait for both.

    Typically two worker-thread hops (hash and write, cache and spool) that
    use both cores at once. Exceptions are collected rather than left to the
    task group, which would wrap them in an exception group: the first is
    raised unwrapped. When ``main`` fails, ``beside`` is cancelled.
    """
    failures: list[Exception] = []

    async def run_beside() -> None:
        try:
            await beside()
        except Exception as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_beside)
        try:
            await main()
        except Exception as exc:
            failures.insert(0, exc)
            tg.cancel_scope.cancel()
    if failures:
        raise failures[0]
