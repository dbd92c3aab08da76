"""The blob fetch: one shared flight per digest, driven in the background.

A flight asks the serving connectors in order (the sources loop), streams
the first answer into the cache writer (or a verifier, when the policy does
not cache it) and into its :class:`~dockerconnect._flight.BlobFlight` for
readers, resumes a broken transfer with a range request, and fails over to
the next connector while no reader has been let in. A connector that sends
nothing for the stall limit is abandoned like a broken one.

Flights are keyed by digest and by the chain of registries the request came
through: a fetch started where some registry counted as a loop (and so as a
miss) is never handed to a caller for whom that registry is a valid source.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import anyio

from dockerconnect._chain import current_chain, waiting_for, would_deadlock
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._flight import BlobFlight, copy_error
from dockerconnect._protocols import BlobStore, BlobWriter, Connector
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.pump import Pump
from dockerconnect._resolve.shared import Gate, Lead
from dockerconnect._resolve.sources import Nobody, expect
from dockerconnect._stream import BlobStream
from dockerconnect.errors import (
    BlobUnknown,
    ConnectorCycle,
    DigestMismatch,
    DockerConnectError,
    NotFound,
    ResolverClosed,
    UpstreamDigestMismatch,
)

__all__ = ["BlobFetch"]

log = logging.getLogger("dockerconnect.resolver")
#: INFO: each blob fetched through a connector (a cache miss).
misses = logging.getLogger("dockerconnect.resolver.misses")


class BlobFetch:
    """The resolver's blobs: its store first, then one shared flight per digest."""

    def __init__(
        self,
        context: Context,
        *,
        store: BlobStore,
        spool_dir: str | None,
        gate: Gate | None = None,
    ) -> None:
        self._ctx = context
        self.owner = context.owner
        self.store = store
        self.usage = context.usage
        self._spool_dir = spool_dir
        #: Who fetches each blob among the processes sharing the store
        #: (:mod:`.shared`); ``None``: this process alone uses it.
        self.gate = gate
        self._flights: dict[tuple[Digest, tuple[int, ...]], BlobFlight] = {}
        #: Flights that may still have readers (forgotten with their last one).
        self._recent: weakref.WeakSet[BlobFlight] = weakref.WeakSet()
        #: Moves bytes from a connector into a flight, resuming and failing over.
        self.pump = Pump(context)

    def close(self) -> None:
        """The resolver closed: every flight still in the air ends with ``ResolverClosed``."""
        for flight in list(self._flights.values()):
            flight.finish(ResolverClosed(f"resolver {self.owner!r} closed"))
        self._flights.clear()

    def in_flight(self, digest: Digest) -> bool:
        """Whether a shared flight of ``digest`` still needs the blob in the store
        (:attr:`BlobFlight.keeps_blob`): retention leaves it there."""
        return any(f.digest == digest and f.keeps_blob for f in self._recent)

    def _flight(self, digest: Digest) -> BlobFlight | None:
        flight = self._flights.get((digest, current_chain()))
        if flight is not None and flight.committed:
            # Committed: new readers go to the store, while the flight's
            # own clean-up (such as the gate's) finishes.
            return None
        return flight

    # -- reading -----------------------------------------------------------------

    async def stat(self, repository: str, digest: Digest) -> Descriptor:
        local = await self.store.stat(digest)
        if local is not None:
            self._ctx.stats.hit(self.owner)
            self._ctx.usage.used_blob(digest)
            return local
        flight = self._flight(digest)
        if flight is not None and flight.size is not None and flight.error is None:
            return Descriptor("application/octet-stream", digest, flight.size)

        async def ask(connector: Connector) -> Descriptor | None:
            found = await connector.stat_blob(repository, digest)
            return expect(connector, found, Descriptor, "stat_blob")

        found = await self._ctx.sources.first(
            self._ctx.sources.serving(repository),
            kind="blob",
            request="stat_blob",
            repository=repository,
            ref=str(digest),
            ask=ask,
        )
        if isinstance(found, Nobody):
            raise found.error(BlobUnknown, f"blob {digest}", repository=repository, digest=digest)
        return found.value

    async def open(
        self, repository: str, digest: Digest, offset: int, *, partial: bool
    ) -> BlobStream:
        """The blob from ``offset``: from the store, or by joining (or starting) a flight.

        A ``partial`` read (a range: it may stop before the end) of a blob
        not yet held gets its bytes only once the flight has verified the
        whole blob, so no unverified byte is ever served.
        """
        if self._flight(digest) is None:
            local = await self.store.open(digest, offset=offset)
            if local is not None:
                self._ctx.stats.hit(self.owner)
                self._ctx.usage.used_blob(digest)
                self._ctx.stats.emit("served", item="blob", digest=digest, size=local.size)
                return self._counted(local, offset, self.owner)
        flight = self._flight(digest)
        if flight is not None:
            if would_deadlock(flight):
                raise ConnectorCycle(
                    f"request for {digest} would wait on itself through {self.owner!r}",
                    connector=self.owner,
                    digest=digest,
                )
            self._ctx.stats.joined_waiters += 1
        else:
            flight = self._start(repository, digest)
        return await self._join(flight, offset, partial)

    async def _join(self, flight: BlobFlight, offset: int, partial: bool) -> BlobStream:
        flight.reserve()
        try:
            with waiting_for(flight):
                await flight.ready.wait()
            if flight.error is not None or flight.size is None:
                assert flight.error is not None
                raise copy_error(flight.error)
            if flight.cached and flight.done:
                # Fetched (or found) and committed before this reader was let
                # in: read the store, but say where the bytes came from.
                local = await self.store.open(flight.digest, offset=offset)
                if local is not None:
                    self._ctx.usage.used_blob(flight.digest)
                    flight.release()
                    return self._counted(local, offset, flight.source)
        except BaseException:
            flight.release()
            raise
        return flight.stream(offset, on_bytes=self._ctx.stats.served, verified_only=partial)

    def _counted(self, stream: BlobStream, offset: int, source: str) -> BlobStream:
        return BlobStream(
            stream.digest, stream.size, _counted(stream, self._ctx.stats.served), offset=offset,
            source=source,
        )  # fmt: skip

    async def location(self, repository: str, digest: Digest) -> str | None:
        """Where the blob is: here, a connector's name, or ``None``. Nothing is cached."""
        return found[0] if (found := await self._locate(repository, digest)) else None

    async def find(self, repository: str, digest: Digest) -> Descriptor | None:
        """The blob's descriptor, from here or the first connector that has it; uncached."""
        return found[1] if (found := await self._locate(repository, digest)) else None

    async def _locate(self, repository: str, digest: Digest) -> tuple[str, Descriptor] | None:
        local = await self.store.stat(digest)
        if local is not None:
            return self.owner, local

        async def ask(connector: Connector) -> Descriptor | None:
            found = await connector.stat_blob(repository, digest)
            return expect(connector, found, Descriptor, "stat_blob")

        for connector in self._ctx.sources.serving(repository):
            try:
                found = await self._ctx.sources.call(
                    connector, "stat_blob", str(digest), functools.partial(ask, connector)
                )
            except Exception as exc:
                self._ctx.sources.failed(connector, exc, str(digest))
                continue
            if found is not None:
                return connector.name, found
        return None

    # -- copying here ------------------------------------------------------------

    async def pin(self, repository: str, digest: Digest) -> bool:
        """Copy a blob here through a shared fetch; whether it is now held here."""
        for _ in range(2):
            flight = self._flight(digest) or self._start(repository, digest, pin=True)
            await flight.finished.wait()
            if await self.store.stat(digest) is not None:
                return True
            error = flight.error or flight.cache_error
            if error is not None and not isinstance(error, NotFound):
                raise copy_error(error)
        return False

    async def prefetch(self, repository: str, digest: Digest) -> None:
        """Cache a blob in the background (eager caching); errors are logged."""
        if await self.store.stat(digest) is not None:
            return
        flight = self._flight(digest)
        if flight is None:
            self._ctx.stats.eager_fetches += 1
            flight = self._start(repository, digest)
        await flight.finished.wait()
        if flight.error is not None:
            log.warning("eager caching of %s failed: %s", digest, flight.error)

    # -- the flight ----------------------------------------------------------------

    def _start(self, repository: str, digest: Digest, *, pin: bool = False) -> BlobFlight:
        flight = BlobFlight(digest, spool_dir=self._spool_dir)
        key = (digest, current_chain())
        self._flights[key] = flight
        self._recent.add(flight)
        self._ctx.tasks.spawn(self._fly, key, repository, flight, pin, work=flight)
        return flight

    async def _fly(
        self, key: tuple[Digest, tuple[int, ...]], repository: str, flight: BlobFlight, pin: bool
    ) -> None:
        """The background side of a shared fetch: find a source, stream, verify, commit."""
        digest = flight.digest
        error: BaseException | None = None
        try:
            if self.gate is not None:
                # Other processes share the store: fetch only if none does. The
                # gate looks in the store itself once it may fetch (a leader
                # that ended meanwhile may have committed the blob).
                error = await self.gate.fly(self, repository, flight, pin)
            else:
                local = await self.store.stat(digest)
                if local is not None:
                    # Committed by a fetch that ended while this one was set up.
                    flight.held_locally(local.size, self.owner)
                    return
                error = await self.from_sources(repository, flight, pin, None)
        except Exception as exc:
            error = exc
        except BaseException:
            error = ResolverClosed(f"resolver {self.owner!r} closed", digest=digest)
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.finish(error)

    async def from_sources(
        self, repository: str, flight: BlobFlight, pin: bool, lead: Lead | None
    ) -> BaseException | None:
        """Fetch from the first connector that has the blob; the error if none does.

        ``lead`` (from the gate) is told the blob's size and source, for the
        processes following this fetch.
        """
        digest = flight.digest

        async def ask(connector: Connector) -> BlobStream | None:
            return await self.pump.open_upstream(connector, repository, digest, 0)

        async def use(connector: Connector, stream: BlobStream) -> bool:
            await self._transfer(repository, flight, connector, stream, pin, lead)
            return True

        found = await self._ctx.sources.first_then(
            self._ctx.sources.for_blob(repository, digest),
            kind="blob",
            request="open_blob",
            repository=repository,
            ref=str(digest),
            ask=ask,
            use=use,
            # Once readers hold bytes from a source it cannot be undone.
            fatal=lambda exc: not flight.replaceable,
        )
        if isinstance(found, Nobody):
            return found.error(BlobUnknown, f"blob {digest}", repository=repository, digest=digest)
        return None

    async def _transfer(
        self,
        repository: str,
        flight: BlobFlight,
        connector: Connector,
        stream: BlobStream,
        pin: bool,
        lead: Lead | None = None,
    ) -> None:
        digest = flight.digest
        size = stream.size
        cache = pin or self._ctx.policy_for(connector.name).caches_blob(size)
        if pin:
            await self._ctx.usage.pushed_blob(digest)  # before the ingest: never a cache
        _log_miss(digest, size, connector.name, cache)
        try:
            async with AsyncExitStack() as stack:
                stack.push_async_callback(stream.aclose)
                if cache:
                    await self._into_cache(stack, flight, connector, stream, pin, lead, repository)
                else:
                    if lead is not None:
                        # Not cached, so nothing for the others to read: each
                        # process fetches such a blob for itself.
                        await lead.end(committed=False)
                    verifier = DigestVerifier(digest, size)
                    await flight.begin(size, connector.name)
                    await self.pump.run(repository, flight, connector, stream, verifier.aupdate)
                    verifier.verify()
                    flight.mark_verified(cached=False)
        except DigestMismatch as exc:
            self._ctx.sources.suspect(connector, digest)
            log.warning("connector %r sent wrong bytes for %s: %s", connector.name, digest, exc)
            raise UpstreamDigestMismatch(
                f"connector {connector.name!r} sent bytes that do not match {digest}",
                connector=connector.name,
                digest=digest,
                repository=repository,
            ) from exc
        stats = self._ctx.stats
        stats.emit("fetched", connector=connector.name, item="blob", digest=digest, size=size)
        if cache and flight.cached:
            stats.emit("cached", connector=connector.name, item="blob", digest=digest, size=size)

    async def _into_cache(
        self,
        stack: AsyncExitStack,
        flight: BlobFlight,
        connector: Connector,
        stream: BlobStream,
        pin: bool,
        lead: Lead | None,
        repository: str,
    ) -> None:
        """Pump ``stream`` into the store's writer; readers get the last byte once verified."""
        digest, size = flight.digest, stream.size
        writer = await stack.enter_async_context(self.store.ingest(digest, size))
        await flight.begin(
            size,
            connector.name,
            read_back=getattr(writer, "read_back", None),
            reopen=functools.partial(self.reopen, digest),
        )
        if lead is not None:
            await lead.begin(size, connector.name)
        await self.pump.run(repository, flight, connector, stream, writer.write)
        verify: Callable[[], None] | None = getattr(writer, "verify", None)
        if verify is None:
            await self.commit_durably(writer, digest, connector.name, size, pin)
            flight.committed = True
            flight.mark_verified(cached=True)
        else:
            # Verified: readers get the last byte now. The durable
            # commit (fsync, rename) follows off their critical
            # path; the flight stays registered until it ends, so
            # the next request joins it and reads the writer's file.
            verify()
            flight.mark_verified(cached=True)
            await self._commit(flight, writer, connector.name, size, pin)

    async def _commit(
        self, flight: BlobFlight, writer: BlobWriter, source: str, size: int, pin: bool
    ) -> None:
        """Make a verified blob durable; a failure costs the cached copy, not the
        readers, who were served verified bytes already."""
        try:
            await self.commit_durably(writer, flight.digest, source, size, pin)
            flight.committed = True
        except DockerConnectError as exc:
            flight.cached = False
            flight.cache_error = exc
            log.warning("caching of %s failed after it was served: %s", flight.digest, exc)
        except BaseException:
            flight.cached = False
            raise

    async def commit_durably(
        self, writer: BlobWriter, digest: Digest, source: str, size: int, pin: bool
    ) -> None:
        """Commit ``writer`` (within retention's admission unless pinned) and mark it.

        The commit and its mark are shielded: a resolver that closes meanwhile
        waits for them, so a blob its readers got is cached (and counted) as
        if they had waited for it.
        """
        if pin:
            with anyio.CancelScope(shield=True):
                await writer.commit()
            return
        async with self._ctx.usage.room(size):  # retention's admission
            with anyio.CancelScope(shield=True):
                await writer.commit()
                # Marked after the commit (so its time is the clock's).
                await self._ctx.usage.cached_blob(digest, source, size)

    async def reopen(self, digest: Digest, offset: int) -> BlobStream | None:
        """The committed blob from ``offset`` (for readers still replaying)."""
        return await self.store.open(digest, offset=offset)


def _log_miss(digest: Digest, size: int, connector: str, cache: bool) -> None:
    policy = "" if cache else " (not cached: policy)"
    misses.info("cache miss: blob %s (%d bytes) from %r%s", digest, size, connector, policy)


async def _counted(stream: BlobStream, count: Callable[[int], None]) -> AsyncIterator[bytes]:
    async with stream:
        async for chunk in stream:
            count(len(chunk))
            yield chunk
