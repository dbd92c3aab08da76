"""``RedisFetchCoordinator``: one upstream fetch per blob across replicas, and a
shared miss cache.

The rule, as a fetching replica and a waiting replica see it::

    lease = await coordinator.acquire(digest)
    if lease is not None:                       # this replica fetches
        async with coordinator.keep(lease):     # renewed until the block ends
            ...fetch, verify, commit to the shared BlobStore...
            await coordinator.release(lease, committed=True)
    else:                                       # another replica fetches
        outcome = await coordinator.wait(digest)
        if outcome == "committed": ...serve from the shared BlobStore...
        else: ...the holder gave up or died: acquire again and take over...

A lease is a Redis key set with ``SET key token NX PX ttl``: it expires on
its own when the holder dies, so another replica takes over within
``lease_ttl`` seconds (resuming from whatever it can verify). Renewal and
release check the token in a Lua script, so a holder whose lease expired
and was taken over can never extend or delete the new holder's lease.
``release(committed=True)`` also leaves a short-lived "committed" mark that
waiters see at once. The blob store stays the truth: a waiter told
"committed" reads the blob from it, and one told "released" should check it
before fetching.

Like the stores, the client lives on a private asyncio loop thread, so the
coordinator works on asyncio and trio.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal

import anyio
import attrs

from dockerconnect._closing import AsyncClosing
from dockerconnect._digest import Digest
from dockerconnect.errors import InvalidInput, StorageError
from dockerconnect.redis._connection import RedisConnection, redacted

__all__ = ["FetchLease", "RedisFetchCoordinator", "WaitOutcome"]

#: What :meth:`RedisFetchCoordinator.wait` reports.
WaitOutcome = Literal["committed", "released"]

# KEYS: lease   ARGV: token, ttl in ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease, committed   ARGV: token, committed (0/1), mark ttl in ms
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
return 1
"""


@attrs.frozen(slots=True)
class FetchLease:
    """The right to fetch ``digest``, held until released or expired."""

    digest: Digest
    token: str


class RedisFetchCoordinator(AsyncClosing):
    """Leases and misses in Redis, shared by every replica that names the same
    ``url`` and ``prefix``.

    ``lease_ttl`` is how long a lease lives without renewal (how long
    replicas wait before taking over from a dead holder); :meth:`keep`
    renews every third of it. ``poll_interval`` is how often :meth:`wait`
    looks. ``owner`` names this replica in the lease value (for operators
    reading Redis); it defaults to ``host:pid``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "dockerconnect:",
        lease_ttl: float = 30.0,
        poll_interval: float = 0.1,
        committed_ttl: float = 300.0,
        owner: str | None = None,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InvalidInput(
                f"RedisFetchCoordinator needs a redis:// (or rediss://, unix://) URL, not {url!r}"
            )
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("poll_interval", poll_interval),
            ("committed_ttl", committed_ttl),
        ):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise InvalidInput(f"{name} must be a positive number of seconds, not {value!r}")
        self.url = url
        self.prefix = prefix
        self.lease_ttl = float(lease_ttl)
        self.poll_interval = float(poll_interval)
        self.committed_ttl = float(committed_ttl)
        self.max_connections = max_connections
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._redis = RedisConnection("RedisFetchCoordinator", url, max_connections=max_connections)

    def _lease_key(self, digest: Digest) -> str:
        return f"{self.prefix}fetch:{digest}"

    def _committed_key(self, digest: Digest) -> str:
        return f"{self.prefix}committed:{digest}"

    def _miss_key(self, connector: str, repository: str, reference: str) -> str:
        # The connector's length first: connector names may hold ":".
        return f"{self.prefix}miss:{len(connector)}:{connector}:{repository}:{reference}"

    # --- leases ---------------------------------------------------------------------

    async def acquire(self, digest: Digest | str) -> FetchLease | None:
        """A lease on fetching ``digest``, or ``None`` if another holder has one."""
        digest = Digest.parse(digest)
        token = f"{self.owner}/{uuid.uuid4().hex}"
        got = await self._redis.call(
            "set", self._lease_key(digest), token, nx=True, px=_ms(self.lease_ttl)
        )
        return FetchLease(digest, token) if got else None

    async def renew(self, lease: FetchLease) -> bool:
        """Extend ``lease`` by ``lease_ttl``; ``False`` if it is no longer held."""
        keys = [self._lease_key(lease.digest)]
        return bool(await self._redis.script(_RENEW, keys, [lease.token, _ms(self.lease_ttl)]))

    async def release(self, lease: FetchLease, *, committed: bool) -> bool:
        """Give ``lease`` up, saying whether the blob is now in the shared store.

        ``False`` if it was no longer held (it expired, and perhaps another
        replica took over): nothing is changed then.
        """
        keys = [self._lease_key(lease.digest), self._committed_key(lease.digest)]
        args = [lease.token, "1" if committed else "0", _ms(self.committed_ttl)]
        return bool(await self._redis.script(_RELEASE, keys, args))

    def keep(self, lease: FetchLease) -> AbstractAsyncContextManager[FetchLease]:
        """Renew ``lease`` in the background while the block runs.

        If a renewal finds the lease lost (this replica stalled for longer
        than ``lease_ttl``), the block is cancelled: another replica owns the
        fetch now. Leaving the block does not release the lease.
        """
        return self._keep(lease)

    @asynccontextmanager
    async def _keep(self, lease: FetchLease) -> AsyncIterator[FetchLease]:
        lost: StorageError | None = None
        failed: Exception | None = None

        async def renew_until_lost(scope: anyio.CancelScope) -> None:
            nonlocal lost
            while True:
                await anyio.sleep(self.lease_ttl / 3)
                try:
                    held = await self.renew(lease)
                except StorageError as error:
                    # Unrenewable is as good as lost: it expires on its own.
                    held, lost = False, error
                if not held:
                    lost = lost or StorageError(
                        "the fetch lease expired and may be held by another replica",
                        digest=str(lease.digest),
                    )
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew_until_lost, tg.cancel_scope)
            try:
                yield lease
            except Exception as error:
                # Raised below, as itself rather than inside an exception group.
                failed = error
            tg.cancel_scope.cancel()
        if lost is not None:
            raise lost from failed
        if failed is not None:
            raise failed

    async def wait(self, digest: Digest | str, *, timeout: float | None = None) -> WaitOutcome:
        """Until the holder of ``digest``'s lease commits or lets go.

        ``"committed"``: the blob is in the shared store. ``"released"``: no
        lease is held and no commit was seen (the holder failed, died, or
        there was none): acquire and fetch. ``TimeoutError`` after
        ``timeout`` seconds.
        """
        digest = Digest.parse(digest)
        with anyio.fail_after(timeout):
            while True:
                committed, leased = await self._redis.pipeline(
                    "EXISTS",
                    ("exists", [self._committed_key(digest)]),
                    ("exists", [self._lease_key(digest)]),
                )
                if committed:
                    return "committed"
                if not leased:
                    return "released"
                await anyio.sleep(self.poll_interval)

    # --- misses ---------------------------------------------------------------------

    async def remember_miss(
        self, connector: str, repository: str, reference: str, *, ttl: float
    ) -> None:
        """Record that ``connector`` has no ``reference`` in ``repository``, for ``ttl`` s."""
        if ttl <= 0:
            return
        await self._redis.call(
            "set", self._miss_key(connector, repository, reference), "1", px=_ms(ttl)
        )

    async def is_miss(self, connector: str, repository: str, reference: str) -> bool:
        """Whether a replica remembered this miss within its TTL."""
        return bool(
            await self._redis.call("exists", self._miss_key(connector, repository, reference))
        )

    async def forget_miss(self, connector: str, repository: str, reference: str) -> None:
        """Drop a remembered miss (the content was pushed or found)."""
        await self._redis.call("delete", self._miss_key(connector, repository, reference))

    # --- lifetime ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections and stop their thread; safe to call more than once."""
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"RedisFetchCoordinator({redacted(self.url)!r}, prefix={self.prefix!r})"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
