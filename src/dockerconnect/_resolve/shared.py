"""One upstream fetch per blob across processes and replicas sharing one store.

Within a process, a :class:`~dockerconnect._flight.BlobFlight` is shared by
every reader. Across processes, the flight that is about to fetch first asks
a *gate* which of the processes sharing the store fetches the blob:

- it **leads**: it fetches as a lone process would, and lets the others see
  its bytes (a filesystem store) or its commit (Redis);
- it **follows**: its readers get the leader's bytes as they land (a
  filesystem store), or wait for the commit (Redis); either way the blob is
  then read from the shared store, verified and committed by the leader.
- the leader died: the follower takes over. Over a filesystem store it
  resumes with a range request from the bytes the dead leader left on disk;
  over Redis it starts afresh once the dead leader's lease expires.

Two gates: :class:`FilesystemGate` (an ``flock``-held in-progress file per
blob, see :mod:`dockerconnect._fsfetch`), chosen by itself for a
:class:`~dockerconnect.FilesystemBlobStore`; and :class:`CoordinatorGate`, for
any :class:`FetchCoordinator` such as
:class:`dockerconnect.redis.RedisFetchCoordinator`, passed to the
:class:`~dockerconnect.Resolver` as ``coordinator=``. Misses and tag
freshness stay per process: they are cheap to get wrong by one request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import anyio

from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore
from dockerconnect._flight import BlobFlight
from dockerconnect._fsfetch import FetchFile, FilesystemFetches
from dockerconnect._protocols import BlobStore
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import (
    BlobUnknown,
    DigestMismatch,
    DockerConnectError,
    UpstreamDigestMismatch,
    UpstreamError,
)

if TYPE_CHECKING:
    from dockerconnect._resolve.blobs import BlobFetch

__all__ = ["CoordinatorGate", "FetchCoordinator", "FilesystemGate", "Gate", "Lead", "gate_for"]

log = logging.getLogger("dockerconnect.resolver")

#: How often a follower looks at the leader's in-progress file for more bytes.
POLL_INTERVAL = 0.02
#: Leaders that end without the blob before a follower gives up and fetches
#: without asking the gate (so a failing peer cannot keep it waiting forever).
MAX_ROUNDS = 8


@runtime_checkable
class FetchCoordinator(Protocol):
    """Leases on fetching a blob, shared by replicas (``RedisFetchCoordinator``).

    ``acquire`` returns a lease or ``None`` (another holder has it); ``keep``
    renews it while a block runs; ``release`` gives it up saying whether the
    blob is now in the shared store; ``wait`` returns once the holder
    committed or let go.
    """

    async def acquire(self, digest: Digest) -> Any: ...

    def keep(self, lease: Any) -> AbstractAsyncContextManager[Any]: ...

    async def release(self, lease: Any, *, committed: bool) -> bool: ...

    async def wait(self, digest: Digest, *, timeout: float | None = None) -> str: ...


class Lead(Protocol):
    """This process fetches the blob: what it shows the others while it does."""

    #: Blob bytes a dead leader left that this one may resume from (0: none).
    prefix: int

    async def read(self, offset: int, size: int) -> bytes: ...

    async def begin(self, size: int, source: str) -> None: ...

    def keep(self) -> AbstractAsyncContextManager[object]: ...

    async def end(self, *, committed: bool) -> None: ...


class Gate(Protocol):
    """Who fetches a blob among the processes sharing a store."""

    async def fly(
        self, fetch: BlobFetch, repository: str, flight: BlobFlight, pin: bool
    ) -> BaseException | None:
        """Lead, follow or take over ``flight``; the error it ends with, if any."""
        ...


def gate_for(store: BlobStore, coordinator: FetchCoordinator | None) -> Gate | None:
    """The gate a resolver over ``store`` uses: the coordinator's, the filesystem
    store's own, or none (a store only this process uses, such as memory)."""
    if coordinator is not None:
        return CoordinatorGate(coordinator)
    if isinstance(store, FilesystemBlobStore):
        return FilesystemGate(FilesystemFetches(store.root))
    return None


# -- leading ---------------------------------------------------------------------------


async def lead(
    fetch: BlobFetch, repository: str, flight: BlobFlight, pin: bool, leader: Lead
) -> BaseException | None:
    """Fetch as the one process that does: afresh, or from a dead leader's prefix."""
    committed = False
    try:
        async with leader.keep():
            # The blob may have been committed by a leader that ended (or
            # died just after committing) between our look and our lead.
            if await _from_store(fetch, flight):
                committed = True
                return None
            if leader.prefix and flight.size is not None:
                await _resume(fetch, repository, flight, leader, pin)
                error = None
            else:
                error = await fetch.from_sources(repository, flight, pin, leader)
            committed = flight.committed
            return error
    finally:
        with anyio.CancelScope(shield=True):
            await leader.end(committed=committed)


async def _resume(
    fetch: BlobFetch, repository: str, flight: BlobFlight, leader: Lead, pin: bool
) -> None:
    """Take over a dead leader's fetch: its prefix into a fresh writer, the rest by Range.

    The flight already follows the dead leader's file (``flight.size`` is
    its header's size), so readers go on where they are.
    """
    digest, size = flight.digest, flight.size
    assert size is not None
    log.info("taking over the fetch of %s at byte %d", digest, leader.prefix)
    try:
        async with fetch.store.ingest(digest, size) as writer:
            position = 0
            while position < leader.prefix:
                chunk = await leader.read(position, min(CHUNK_SIZE, leader.prefix - position))
                if not chunk:
                    break
                await writer.write(chunk)
                if position + len(chunk) > flight.received:
                    await flight.append(chunk[flight.received - position :])
                position += len(chunk)
            found = await fetch.pump.resume(
                repository, flight, fetch._ctx.sources.for_blob(repository, digest)
            )
            if found is None:
                raise BlobUnknown(
                    f"no connector resumes {digest} at byte {flight.received}",
                    repository=repository,
                    digest=digest,
                )
            connector, stream = found
            await fetch.pump.run(repository, flight, connector, stream, writer.write)
            # Within retention's admission, marked as cached (or pushed).
            await fetch.commit_durably(writer, digest, connector.name, size, pin)
            flight.committed = True
    except DigestMismatch as exc:
        raise UpstreamDigestMismatch(
            f"the resumed fetch of {digest} does not match it: {exc.message}",
            digest=digest,
            repository=repository,
        ) from exc
    flight.mark_verified(cached=True)


async def _from_store(fetch: BlobFetch, flight: BlobFlight) -> bool:
    """If the store holds the blob, let the flight's readers have the rest from it."""
    local = await fetch.store.stat(flight.digest)
    if local is None:
        return False
    if flight.size is None or flight.replaceable:
        flight.held_locally(local.size, fetch.owner)
        return True
    if local.size != flight.size:
        raise UpstreamError(
            f"another process committed {flight.digest} with {local.size} bytes, "
            f"not the {flight.size} its fetch announced",
            digest=flight.digest,
        )
    # Readers follow what landed so far: hand them the rest, verified as a
    # whole by the leader that committed it.
    stream = await fetch.store.open(flight.digest, offset=flight.received)
    if stream is None:  # removed in between: a fetch of our own decides
        return False
    async with stream:
        async for chunk in stream:
            await flight.append(chunk)
            flight.stored(len(chunk))  # held by the leader's file: the tail may drop it
    flight.mark_verified(cached=True)
    return True


# -- the filesystem gate -------------------------------------------------------------------


class FilesystemGate:
    """Processes over one filesystem root: an ``flock``-held in-progress file per blob."""

    def __init__(self, fetches: FilesystemFetches) -> None:
        self.fetches = fetches
        #: Flights that followed another process's fetch, and that took one over.
        self.followed = 0
        self.takeovers = 0

    async def fly(
        self, fetch: BlobFetch, repository: str, flight: BlobFlight, pin: bool
    ) -> BaseException | None:
        for _ in range(MAX_ROUNDS):
            file = await self.fetches.open(flight.digest)
            outcome = "held"
            try:
                if not file.held:
                    await file.announce()
                    outcome = await self._follow(fetch, flight, file)
                    if outcome == "ended":
                        if await _from_store(fetch, flight):
                            return None
                        if not flight.replaceable:
                            return UpstreamError(
                                f"the process fetching {flight.digest} gave up",
                                digest=flight.digest,
                                repository=repository,
                            )
                        continue
                if outcome == "took" or file.prefix:
                    self.takeovers += 1
                if file.prefix and file.header is not None and flight.size is None:
                    # A dead leader's file found at open time: its readers
                    # start from its prefix, as a follower's would.
                    await _begin(fetch, flight, file, *file.header)
                return await lead(fetch, repository, flight, pin, _FileLead(file, flight))
            finally:
                with anyio.CancelScope(shield=True):
                    await file.close()
        return await fetch.from_sources(repository, flight, pin, None)

    async def _follow(
        self, fetch: BlobFetch, flight: BlobFlight, file: FetchFile
    ) -> Literal["ended", "took"]:
        """Feed the leader's bytes into ``flight`` as they land, until it lets go."""
        self.followed += 1
        while True:
            header, landed = await file.landed()
            if header is not None and flight.size is None:
                await _begin(fetch, flight, file, *header)
            if flight.size is not None and landed > flight.received:
                want = min(CHUNK_SIZE, landed - flight.received, flight.size - flight.received)
                chunk = await file.read(flight.received, want)
                if chunk:
                    await flight.append(chunk)
                    flight.stored(len(chunk))  # in the leader's file: readers read it back
                    continue
            taken = await file.take()
            if taken is not None:
                return "took" if taken else "ended"
            await anyio.sleep(POLL_INTERVAL)


async def _begin(
    fetch: BlobFetch, flight: BlobFlight, file: FetchFile, size: int, source: str
) -> None:
    """Start ``flight``'s readers on another process's in-progress file."""
    reopen = functools.partial(fetch.reopen, flight.digest)
    await flight.begin(size, source, read_back=file.read, reopen=reopen)


class _FileLead:
    """A held in-progress file as a :class:`Lead`.

    While the fetch runs, a watcher looks for a follower's mark; once there
    is one, it reads this process's own flight (as any reader does, so the
    bytes come from the flight's tail or the cache writer) into the file,
    from what the file already holds. A fetch nobody follows writes nothing
    but the header.
    """

    def __init__(self, file: FetchFile, flight: BlobFlight) -> None:
        self._file = file
        self._flight = flight
        self.prefix = file.prefix

    async def read(self, offset: int, size: int) -> bytes:
        return await self._file.read(offset, size)

    async def begin(self, size: int, source: str) -> None:
        await self._file.begin(size, source)

    def keep(self) -> AbstractAsyncContextManager[object]:
        return self._kept()

    @asynccontextmanager
    async def _kept(self) -> AsyncIterator[object]:
        # The lock lasts while the file is open: nothing to renew, but the
        # bytes to show once someone follows.
        failed: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._copy_when_followed)
            try:
                yield self
            except BaseException as error:
                # Raised below as itself, not inside an exception group.
                failed = error
            tg.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _copy_when_followed(self) -> None:
        file, flight = self._file, self._flight
        # Another process leaves the mark: nothing here to wait on but the disk.
        while file.header is None or not await file.followed():  # noqa: ASYNC110
            await anyio.sleep(POLL_INTERVAL * 2)
        # The follower reads the committed blob once we let go: it stays.
        flight.shown = True
        if flight.committed:
            # Committed before we saw the follower: retention may have removed
            # the blob already. Show nothing, so the follower (still
            # replaceable) reads the store, or fetches, once we let go.
            return
        flight.reserve()
        try:
            await flight.ready.wait()
            if flight.error is not None or file.written > (flight.size or 0):
                flight.release()
                return
        except BaseException:
            flight.release()
            raise
        try:
            async with flight.stream(file.written) as stream:
                async for chunk in stream:
                    await file.write(chunk)
        except DockerConnectError as exc:
            # Followers see no more bytes; they get the blob from the store
            # once this fetch commits it, or take over if it fails.
            log.warning("could not show the fetch of %s to other processes: %s", file, exc)

    async def end(self, *, committed: bool) -> None:
        await self._file.close()


# -- the coordinator gate -------------------------------------------------------------------


class CoordinatorGate:
    """Replicas sharing a store and a :class:`FetchCoordinator`: a lease per blob.

    A follower waits for the leader's commit (bytes in object storage cannot
    be read before the upload completes) and takes over, from the first
    byte, once the leader lets go or its lease expires.
    """

    def __init__(self, coordinator: FetchCoordinator) -> None:
        self.coordinator = coordinator
        #: Flights that waited for another replica's fetch.
        self.followed = 0

    async def fly(
        self, fetch: BlobFetch, repository: str, flight: BlobFlight, pin: bool
    ) -> BaseException | None:
        for _ in range(MAX_ROUNDS):
            lease = await self.coordinator.acquire(flight.digest)
            if lease is not None:
                return await lead(
                    fetch, repository, flight, pin, _LeaseLead(self.coordinator, lease)
                )
            self.followed += 1
            await self.coordinator.wait(flight.digest)
            if await _from_store(fetch, flight):
                return None
        return await fetch.from_sources(repository, flight, pin, None)


class _LeaseLead:
    """A coordinator's lease as a :class:`Lead`: nothing to show but the commit."""

    prefix = 0

    def __init__(self, coordinator: FetchCoordinator, lease: Any) -> None:
        self._coordinator = coordinator
        self._lease = lease
        self._ended = False
        self._keeping = False

    async def read(self, offset: int, size: int) -> bytes:  # pragma: no cover - no prefix
        return b""

    async def begin(self, size: int, source: str) -> None:
        return None

    @asynccontextmanager
    async def keep(self) -> AsyncIterator[object]:
        async with self._coordinator.keep(self._lease) as kept:
            self._keeping = True
            try:
                yield kept
            finally:
                self._keeping = False

    async def end(self, *, committed: bool) -> None:
        if self._ended:
            return
        if self._keeping and not committed:
            # Said early (a blob the policy does not cache): releasing now
            # would make the renewal inside keep() find the lease lost and
            # cancel the transfer. The lease goes when keep() ends.
            return
        self._ended = True
        try:
            await self._coordinator.release(self._lease, committed=committed)
        except DockerConnectError as exc:
            # The lease expires on its own; the blob store stays the truth.
            log.warning("could not release the fetch lease of %s: %s", self._lease, exc)
