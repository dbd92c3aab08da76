"""One Redis connection on a private asyncio loop thread, shared by the
manifest store and the fetch coordinator.

redis-py's asyncio client runs only on asyncio; a loop thread of its own
(:class:`~dockerconnect._asyncio_thread.AsyncioThread`) lets both classes
work under trio too. Every Redis failure becomes one
:class:`~dockerconnect.errors.StorageError` naming the server (without its
password) and what to fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from dockerconnect._asyncio_thread import AsyncioThread
from dockerconnect.errors import StorageError

try:
    import redis.asyncio
    import redis.exceptions
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "dockerconnect.redis needs redis-py: pip install 'dockerconnect[redis]'"
    ) from error

__all__ = ["RedisConnection", "connect", "redacted"]

_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


class RedisConnection:
    """A lazily opened client (a blocking pool) and its loop thread.

    ``name`` names the thread; ``options`` go to :func:`connect`.
    """

    def __init__(self, name: str, url: str, **options: Any) -> None:
        self.url = url
        self._options = options
        self._thread = AsyncioThread(f"{name}({redacted(url)})")
        # Touched only on the loop thread.
        self._redis: redis.asyncio.Redis | None = None
        self._scripts: dict[str, Any] = {}

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis command (a client method name) with its arguments."""
        return await self._thread.run(self._command, command, args, kwargs)

    async def script(self, source: str, keys: list[str], args: Sequence[Any]) -> Any:
        """Run a Lua script (registered once, then sent by its SHA)."""
        return await self._thread.run(self._script, source, keys, list(args))

    async def pipeline(self, name: str, *commands: tuple[str, Sequence[Any]]) -> list[Any]:
        """Run ``commands`` (method name and arguments each) in one MULTI/EXEC."""
        return await self._thread.run(self._pipeline, name, commands)

    async def aclose(self) -> None:
        """Close the connections and stop the thread; safe to call more than once."""
        await self._thread.aclose(self._close)

    # --- on the loop thread -----------------------------------------------------

    def _client(self) -> redis.asyncio.Redis:
        if self._redis is None:
            self._redis = connect(self.url, **self._options)
        return self._redis

    async def _close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _command(self, command: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        try:
            return await getattr(self._client(), command)(*args, **kwargs)
        except _FAILURES as error:
            raise self.translate(error, command) from error

    async def _script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client().register_script(source)
        try:
            return await script(keys=keys, args=args)
        except _FAILURES as error:
            raise self.translate(error, "EVALSHA") from error

    async def _pipeline(self, name: str, commands: Sequence[tuple[str, Sequence[Any]]]) -> Any:
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                for command, args in commands:
                    getattr(pipe, command)(*args)
                return await pipe.execute()
        except _FAILURES as error:
            raise self.translate(error, name) from error

    def translate(self, error: BaseException, command: str) -> StorageError:
        """The ``StorageError`` for a Redis failure, saying what to fix."""
        where = redacted(self.url)
        if isinstance(error, redis.exceptions.AuthenticationError):
            return StorageError(f"Redis at {where} refused the credentials: fix the URL's password")
        if isinstance(error, redis.exceptions.ConnectionError | OSError):
            return StorageError(f"cannot reach Redis at {where} ({command}): {error}")
        if isinstance(error, redis.exceptions.TimeoutError | asyncio.TimeoutError):
            return StorageError(f"Redis at {where} timed out ({command})")
        return StorageError(f"Redis {command} at {where} failed: {error}")


def connect(
    url: str,
    *,
    max_connections: int = 32,
    socket_timeout: float | None = 30.0,
    socket_connect_timeout: float | None = 30.0,
) -> redis.asyncio.Redis:
    """A client whose pool makes callers wait for a free connection.

    redis-py's default pool raises "Too many connections" once
    ``max_connections`` are busy; a cache under load should queue instead
    (for up to ``socket_timeout`` seconds).
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
    )
    return redis.asyncio.Redis.from_pool(pool)


def redacted(url: str) -> str:
    """``url`` without its password, for messages and thread names."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if user else f"{scheme}://***@{host}"
