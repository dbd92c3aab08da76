"""One shared upstream fetch of a blob, read by any number of clients.

A flight is driven by the resolver's own background task: it pulls the blob
from a connector, writes it to the blob store (when the policy caches it) and
to an anonymous spool file, and wakes readers as bytes arrive. Readers replay
from the spool at their own pace, so a reader that pauses or leaves never
delays the others or the caching, and memory stays bounded (one coalescing
buffer per flight, one chunk per reader) whatever the blob size.

A reader never receives a blob's last byte before the whole blob has been
verified: a reader that got every byte can rely on it. Committing the cached
copy (fsync, rename) may finish after that; until it has, the flight stays
the digest's one fetch, and readers who join it read the cache writer's file.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import IO

import anyio
import anyio.to_thread

from dockerconnect._chain import Work
from dockerconnect._digest import Digest
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import DockerConnectError, RangeInvalid, ResolverClosed

__all__ = ["BlobFlight", "ReadBack", "Reopen", "coalesce", "copy_error"]

#: Reads ``size`` bytes at an offset back from a cache writer.
ReadBack = Callable[[int, int], Awaitable[bytes]]
#: Opens the committed blob from an offset.
Reopen = Callable[[int], Awaitable["BlobStream | None"]]

#: Small network reads are joined to at least this many bytes before a thread
#: hop (hashing, writing): per-hop overhead dwarfs tiny chunks. One store
#: chunk, so the filesystem writer hashes and writes each piece at once, in
#: two threads, instead of buffering (and copying) it again.
COALESCE_SIZE = CHUNK_SIZE
#: Recent chunks kept in memory per flight, for readers that keep up (and
#: every chunk the cache writer has not stored yet, however many).
TAIL_SIZE = 2 * 1024 * 1024
#: Readers replaying (from the cache writer or the spool) read this much at a
#: time: small enough that a hundred lagging readers stay cheap, large enough
#: for few thread hops.
REPLAY_CHUNK = 256 * 1024
#: Readers are let in once this much has arrived (or the blob is verified):
#: until then a source that sends wrong bytes can be replaced unseen, and a
#: small blob reaches its readers only verified.
HOLD_FIRST = 1024 * 1024
#: What :meth:`BlobFlight._replay` answers once the cache writer is gone.
_COMMITTED = b"<committed>"


async def coalesce(
    chunks: AsyncIterable[bytes], size: int = COALESCE_SIZE
) -> AsyncGenerator[bytes, None]:
    """Join small chunks into pieces of at least ``size`` bytes (the last may be smaller)."""
    pending: list[bytes] = []
    held = 0
    try:
        async for chunk in chunks:
            if not pending and len(chunk) >= size:
                yield chunk
                continue
            pending.append(chunk)
            held += len(chunk)
            if held >= size:
                yield b"".join(pending)
                pending.clear()
                held = 0
    except Exception:
        # A broken source: hand over what did arrive before the error, so a
        # resume starts after it instead of fetching it again.
        if pending:
            yield b"".join(pending)
        raise
    if pending:
        yield b"".join(pending)


class BlobFlight(Work):
    """The state of one shared fetch; the resolver's background task fills it."""

    def __init__(self, digest: Digest, *, spool_dir: str | None) -> None:
        self.digest = digest
        self.waiting_on = None
        self.size: int | None = None
        self.source = ""
        self.received = 0
        self.verified = False
        self.done = False
        self.cached = False
        #: The blob is durably in the store (committed, or found there).
        self.committed = False
        #: A fetch over the same filesystem root follows this one (its readers
        #: read our bytes, then, once we let go, the committed blob).
        self.shown = False
        self.error: BaseException | None = None
        #: Why a verified (and served) blob could not be committed to the store.
        self.cache_error: BaseException | None = None
        self.ready = anyio.Event()
        self.finished = anyio.Event()
        self._progress = anyio.Event()
        self._spool_dir = spool_dir
        self._spool: IO[bytes] | None = None
        self._read_back: ReadBack | None = None
        #: Opens the committed blob from an offset, for readers still
        #: replaying when the cache writer closes.
        self._reopen: Reopen | None = None
        self._tail: deque[tuple[int, bytes]] = deque()
        self._tail_bytes = 0
        #: Bytes the cache writer (or the spool) holds: readers behind the
        #: tail read them back, so the tail keeps every chunk beyond it.
        self._stored = 0
        self._readers = 0

    # -- the driving side ---------------------------------------------------

    def held_locally(self, size: int, source: str) -> None:
        """The blob turned out to be committed already: readers go to the store."""
        self.size, self.source = size, source
        self.cached = self.verified = self.committed = True

    async def begin(
        self,
        size: int,
        source: str,
        *,
        read_back: ReadBack | None = None,
        reopen: Reopen | None = None,
    ) -> None:
        """A source answered with ``size`` bytes: start (or restart) receiving.

        Readers are let in (``ready``) only once :data:`HOLD_FIRST` bytes have
        arrived or the blob is verified, so a source that turns out to send
        wrong bytes early can still be replaced by the next one unseen.
        ``read_back`` reads what the cache writer holds; ``reopen`` opens the
        committed blob (both ``None`` when the blob is not cached).
        """
        assert not self.ready.is_set(), "a flight cannot restart once readers are in"
        self.size = size
        self.source = source
        self.received = 0
        self._stored = 0
        self._reopen = reopen
        self._tail.clear()
        self._tail_bytes = 0
        # A cache writer that can read back what it wrote is the replay buffer
        # for readers that fall behind the in-memory tail; otherwise the
        # bytes are spooled to an anonymous file of the flight's own.
        self._read_back = read_back
        if read_back is None and self._spool is None:
            self._spool = await anyio.to_thread.run_sync(self._make_spool)

    @property
    def keeps_blob(self) -> bool:
        """Whether the blob in the store must not be removed yet (retention asks).

        While the fetch runs, until it has committed; while readers read (a
        reader still replaying moves on to the committed blob); and, when a
        fetch over the same filesystem root (another process's, or a later
        one here) follows its bytes, until the fetch has let go. A committed
        fetch without readers does not: new readers go to the store, so the
        blob may go while the fetch's own clean-up finishes (a follower seen
        only after the commit is shown nothing, and reads the store or
        fetches itself once the fetch lets go).
        """
        if self._readers:
            return True
        return not self.done and (not self.committed or self.shown)

    @property
    def replaceable(self) -> bool:
        """Whether no reader has been let in yet, so another source may take over."""
        return not self.ready.is_set()

    def _make_spool(self) -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="dockerconnect-flight-", dir=self._spool_dir)

    async def append(self, chunk: bytes) -> None:
        """Make ``chunk`` (the next bytes in order) available to readers."""
        offset = self.received
        if self._read_back is None:
            assert self._spool is not None
            await anyio.to_thread.run_sync(_pwrite_all, self._spool.fileno(), chunk, offset)
        self._tail.append((offset, chunk))
        self._tail_bytes += len(chunk)
        self.received += len(chunk)
        if self._read_back is None:
            self._stored = self.received
        self._trim_tail()
        if self.received >= HOLD_FIRST:
            self.ready.set()
        self._notify()

    def stored(self, size: int) -> None:
        """The cache writer holds ``size`` more bytes (in order): readers that
        fall behind the tail may now read them back."""
        if self._read_back is not None:
            self._stored += size
            self._trim_tail()
            self._notify()

    def _trim_tail(self) -> None:
        # Keep TAIL_SIZE of recent chunks, and every chunk not yet stored.
        tail = self._tail
        while (
            self._tail_bytes - len(tail[0][1]) >= TAIL_SIZE
            and tail[0][0] + len(tail[0][1]) <= self._stored
        ):
            self._tail_bytes -= len(tail.popleft()[1])

    def _from_tail(self, pos: int, limit: int) -> bytes | None:
        """Bytes at ``pos`` (up to ``limit``) from the in-memory tail, if it holds them.

        Readers that keep up with the transfer share the very chunk objects
        the flight received: no copy, no thread hop, no extra memory.
        """
        for start, chunk in self._tail:
            end = start + len(chunk)
            if start <= pos < end:
                if pos == start and end <= limit:
                    return chunk
                return chunk[pos - start : min(end, limit) - start]
        return None

    def _release_limit(self, size: int) -> int:
        """How far readers may read now: the blob's last byte only once verified.

        When every byte is in but not yet verified, the whole last chunk is
        held back rather than all of it but one byte, so readers can later
        share that chunk object instead of each holding a copy of its slice.
        """
        if self.verified:
            return self.received
        if self.received >= size and self._tail:
            return min(self._tail[-1][0], size - 1)
        return min(self.received, size - 1)

    def mark_verified(self, *, cached: bool) -> None:
        """Every byte is in and matches the digest: release the last byte.

        ``cached``: the blob is being committed to the store (readers still
        replaying when the writer closes continue from the store).
        """
        self.cached = cached
        self.verified = True
        self.ready.set()
        self._notify()

    def finish(self, error: BaseException | None = None) -> None:
        """The flight is over, successfully or with ``error``."""
        if error is not None and not self.verified:
            self.error = error
        self.done = True
        self.ready.set()
        self.finished.set()
        self._notify()
        self._maybe_close()

    def _notify(self) -> None:
        event, self._progress = self._progress, anyio.Event()
        event.set()

    def _maybe_close(self) -> None:
        if self.done and self._readers == 0:
            self._tail.clear()
            self._tail_bytes = 0
            if self._spool is not None:
                self._spool.close()
                self._spool = None

    # -- the reading side ---------------------------------------------------

    def stream(
        self,
        offset: int,
        *,
        on_bytes: Callable[[int], None] | None = None,
        verified_only: bool = False,
    ) -> BlobStream:
        """A reader from ``offset``, in the place taken by :meth:`reserve`.

        With ``verified_only`` the reader gets no byte before the whole blob
        is verified: for a reader that may stop before the end (a range),
        for whom holding back the last byte would prove nothing.
        Call once :attr:`ready` is set without error.
        """
        assert self.size is not None
        if offset < 0 or offset > self.size:
            self._release_reader()
            raise RangeInvalid(
                f"offset {offset} is outside the blob's {self.size} bytes", digest=self.digest
            )
        return BlobStream(
            self.digest,
            self.size,
            _Reader(self, self._read(offset, on_bytes, verified_only)),
            offset=offset,
            source=self.source,
        )

    @property
    def readers(self) -> int:
        """Readers still reading (or about to) from this flight."""
        return self._readers

    def reserve(self) -> None:
        """Take a reader's place before waiting for :attr:`ready`, so the bytes
        stay readable however soon the flight ends; give it back with
        :meth:`release` unless :meth:`stream` takes it over."""
        self._readers += 1

    def release(self) -> None:
        """Give back a place taken by :meth:`reserve` that no stream took over."""
        self._release_reader()

    def _release_reader(self) -> None:
        self._readers -= 1
        self._maybe_close()

    async def _read(
        self, offset: int, on_bytes: Callable[[int], None] | None, verified_only: bool
    ) -> AsyncGenerator[bytes, None]:
        assert self.size is not None
        size = self.size
        pos = offset
        while True:
            if self.error is not None:
                raise copy_error(self.error)
            limit = pos if verified_only and not self.verified else self._release_limit(size)
            if pos < limit:
                data = await self._replay(pos, limit)
                if data is _COMMITTED:
                    # The cache writer was committed (or failed) meanwhile:
                    # the rest comes from the store, or the error is raised.
                    async with aclosing(self._from_store(pos, on_bytes)) as rest:
                        async for chunk in rest:
                            yield chunk
                    return
                if not data:  # still in the writer's buffer: wait for more
                    await self._progress.wait()
                    continue
                pos += len(data)
                if on_bytes is not None:
                    on_bytes(len(data))
                yield data
                continue
            if pos >= size and self.verified:
                return
            if self.done:
                raise copy_error(
                    self.error or ResolverClosed("blob fetch stopped", digest=self.digest)
                )
            await self._progress.wait()

    async def _replay(self, pos: int, limit: int) -> bytes:
        """Bytes at ``pos`` (before ``limit``): from the tail, the cache writer or
        the spool; ``b""`` if the writer has not flushed them yet, and
        :data:`_COMMITTED` once the writer is gone (read the store instead)."""
        data = self._from_tail(pos, limit)
        if data is not None:
            return data
        n = min(limit - pos, REPLAY_CHUNK)
        if self._read_back is not None:
            try:
                return await self._read_back(pos, n)
            except DockerConnectError:
                return _COMMITTED
        spool = self._spool
        assert spool is not None
        data = await anyio.to_thread.run_sync(os.pread, spool.fileno(), n, pos)
        if not data:  # pragma: no cover - the spool never shrinks
            raise ResolverClosed("blob spool ended early", digest=self.digest)
        return data

    async def _from_store(
        self, pos: int, on_bytes: Callable[[int], None] | None
    ) -> AsyncGenerator[bytes, None]:
        await self.finished.wait()
        if self.error is not None:
            raise copy_error(self.error)
        stream = await self._reopen(pos) if self._reopen is not None and self.cached else None
        if stream is None:
            raise ResolverClosed("the cached blob is gone", digest=self.digest)
        async with stream:
            async for chunk in stream:
                if on_bytes is not None:
                    on_bytes(len(chunk))
                yield chunk


class _Reader:
    """A flight reader that gives its place back however it ends (even unstarted)."""

    def __init__(self, flight: BlobFlight, chunks: AsyncGenerator[bytes, None]) -> None:
        self._flight = flight
        self._chunks = chunks
        self._released = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            await self._chunks.aclose()
        finally:
            self._flight._release_reader()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def copy_error(error: BaseException) -> BaseException:
    """A fresh copy of a shared error, so each waiter raises its own instance
    (and tracebacks of different tasks do not pile up on one object)."""
    try:
        duplicate = copy.copy(error)
    except Exception:  # an exotic exception that cannot be copied: share it
        return error
    duplicate.__cause__ = error.__cause__
    duplicate.__traceback__ = None
    return duplicate
