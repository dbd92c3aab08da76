"""``async with thing:`` for everything closed with ``await thing.aclose()``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

from typing_extensions import Self

__all__ = ["AsyncClosing"]


class AsyncClosing:
    """A resource closed by its ``aclose()``; ``async with`` closes it on the way out.

    A plain mixin (no ``ABCMeta``, so ``isinstance`` on hot paths stays a type
    check): each subclass defines ``aclose``, safe to call more than once.
    """

    aclose: Callable[[], Awaitable[None]]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
