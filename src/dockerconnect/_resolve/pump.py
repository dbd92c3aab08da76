"""The pump: one connector's blob stream into a flight, resumed and failed over.

A broken transfer is resumed from the first byte not yet received, from the
same connector; a stalled or too-slow one from the next connector that has
the blob. Bytes reach the flight's readers as they arrive, while storing
(hashing, writing) runs a bounded distance behind.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from contextlib import aclosing

import anyio

from dockerconnect._digest import Digest
from dockerconnect._flight import BlobFlight, coalesce
from dockerconnect._protocols import Connector
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.sources import Sources, Stalled, expect
from dockerconnect._stream import BlobStream
from dockerconnect.errors import (
    DigestMismatch,
    DockerConnectError,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["MAX_RESUMES", "MIN_RATE", "READ_AHEAD", "Pump", "Sink"]

log = logging.getLogger("dockerconnect.resolver")

#: How many times a broken upstream transfer is resumed before giving up.
MAX_RESUMES = 5
#: Chunks (about 1 MiB each) received and handed to readers ahead of the one
#: being stored: the write-behind. Two measured as fast as four, with less
#: peak memory (docs/performance.md).
READ_AHEAD = 2
#: Bytes a second below which a transfer counts as stalled, averaged over a
#: stall limit's worth of waiting for the connector (a trickling upstream).
MIN_RATE = 1024

#: Where pumped bytes are stored: a cache writer's ``write`` or a verifier's.
Sink = Callable[[bytes], Awaitable[None]]


class Pump:
    """Moves a connector's blob bytes into a flight and a sink."""

    def __init__(self, context: Context) -> None:
        self._ctx = context

    async def open_upstream(
        self, connector: Connector, repository: str, digest: Digest, offset: int
    ) -> BlobStream | None:
        stream = expect(
            connector,
            await connector.open_blob(repository, digest, offset=offset),
            BlobStream,
            "open_blob",
        )
        if stream is not None:
            # The flight hashes every byte itself: a stream that would verify
            # them again may skip it, so each byte is hashed once.
            stream.defer_verification()
        return stream

    async def run(
        self,
        repository: str,
        flight: BlobFlight,
        connector: Connector,
        stream: BlobStream,
        sink: Sink,
    ) -> None:
        """Pump ``stream``; when it breaks, resume from the first byte not yet received.

        A broken transfer is resumed from the same connector; a stalled or
        timed-out one (:class:`Stalled`, ``UpstreamTimeout``) from the next
        connector that has the blob (content is addressed by digest: any
        source's bytes at an offset are the same bytes, and the whole is
        verified at the end). While no reader has been let in, a
        stall fails the transfer instead, and the next source starts afresh.
        """
        resumes = 0
        while True:
            try:
                await self._pump(flight, connector, stream, sink)
                return
            except UpstreamError as exc:
                # Too slow (our stall limit, or the connector's own deadline or
                # minimum rate): the same source would be as slow again.
                stalled = isinstance(exc, (Stalled, UpstreamTimeout))
                if isinstance(exc, DigestMismatch) or resumes >= MAX_RESUMES:
                    raise
                if stalled and flight.replaceable:
                    raise
                resumes += 1
                self._ctx.stats.resumes += 1
                log.info(
                    "resuming %s at byte %d after %r failed (%s)",
                    flight.digest,
                    flight.received,
                    connector.name,
                    exc,
                )
                order = [connector]
                if stalled:
                    others = self._ctx.sources.for_blob(repository, flight.digest)
                    order = [c for c in others if c.name != connector.name]
                resumed = await self.resume(repository, flight, order)
                if resumed is None:
                    raise
                connector, stream = resumed

    async def resume(
        self, repository: str, flight: BlobFlight, order: list[Connector]
    ) -> tuple[Connector, BlobStream] | None:
        """The first connector of ``order`` that sends the blob from where the flight is."""
        offset = flight.received
        for connector in order:
            try:
                stream = await self._ctx.sources.call(
                    connector,
                    "open_blob",
                    str(flight.digest),
                    functools.partial(
                        self.open_upstream, connector, repository, flight.digest, offset
                    ),
                )
            except UpstreamError as exc:
                self._ctx.sources.failed(connector, exc, str(flight.digest))
                continue
            if stream is not None:
                return connector, stream
        return None

    async def _pump(
        self, flight: BlobFlight, connector: Connector, stream: BlobStream, sink: Sink
    ) -> None:
        """Move one upstream stream into the flight and ``sink``; raise if it ends short.

        Readers get each chunk as it arrives; storing (hashing, writing) runs
        behind by up to :data:`READ_AHEAD` chunks, so readers are not paced
        by the disk, and the network, the hashing and the disk work overlap
        instead of taking turns. The flight keeps every chunk not yet stored
        in memory, so the write-behind is bounded by the queue.
        """
        size = stream.size
        failures: list[BaseException] = []
        send, receive = anyio.create_memory_object_stream[bytes](READ_AHEAD)

        async def read_ahead(skip: int) -> None:
            try:
                async with (
                    send,
                    aclosing(
                        _guarded(stream, connector, self._ctx.sources, flight.digest)
                    ) as guarded,
                    aclosing(coalesce(guarded)) as chunks,
                ):
                    async for chunk in chunks:
                        piece, skip = chunk[skip:], max(0, skip - len(chunk))
                        if not piece:
                            continue
                        if flight.received + len(piece) > size:
                            raise DigestMismatch(
                                f"connector {connector.name!r} sent more than {size} bytes",
                                connector=connector.name,
                                digest=flight.digest,
                            )
                        await flight.append(piece)
                        await send.send(piece)
            except Exception as exc:  # raised below, after what arrived is stored
                failures.append(exc)

        async with stream:
            skip = _skip(flight, connector, stream)
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_ahead, skip)
                try:
                    async with receive:
                        async for piece in receive:
                            await sink(piece)
                            flight.stored(len(piece))
                            self._ctx.stats.received(connector.name, len(piece))
                except Exception as exc:
                    failures.insert(0, exc)  # the storing side's error explains the rest
                    tg.cancel_scope.cancel()
        if failures:
            raise failures[0]
        _check_whole(flight, connector, size)


def _skip(flight: BlobFlight, connector: Connector, stream: BlobStream) -> int:
    """How many leading bytes of a (resumed) stream were received already.

    A resumed source that started before where we are (a server ignoring
    Range) has what we hold dropped; one that starts after it, or answers
    for a blob of another size, cannot continue this transfer.
    """
    skip = flight.received - stream.offset
    if skip < 0 or stream.size != flight.size:
        raise UpstreamError(
            f"connector {connector.name!r} resumed at {stream.offset} of"
            f" {stream.size} bytes, not at {flight.received} of {flight.size}",
            connector=connector.name,
            digest=flight.digest,
        )
    return skip


async def _guarded(
    stream: AsyncIterable[bytes], connector: Connector, sources: Sources, digest: Digest
) -> AsyncGenerator[bytes, None]:
    """A connector's chunks, checked: bytes only, errors typed, neither silent nor trickling.

    A third-party connector's stream is a plugin: a plain exception from it
    (``ConnectionResetError``) becomes an ``UpstreamError`` naming the
    connector, so the transfer is resumed as for any broken transfer. No
    chunk for the stall limit, or less than :data:`MIN_RATE` bytes a second
    over a stall limit's worth of waiting, is a :class:`Stalled` transfer.
    Only time spent waiting for the connector counts, not our own writing.
    """
    iterator = aiter(stream)
    window_bytes, window_wait = 0, 0.0
    while True:
        chunk: object = None
        started = anyio.current_time()
        try:
            with anyio.move_on_after(sources.stall_timeout):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except DockerConnectError:
            raise
        except Exception as exc:
            raise UpstreamError(
                f"connector {connector.name!r} broke the transfer of {digest}: {exc!r}",
                connector=connector.name,
                digest=digest,
            ) from exc
        if chunk is None:
            raise sources.stalled(connector, str(digest))
        data = _as_bytes(connector, digest, chunk)
        window_bytes += len(data)
        window_wait += anyio.current_time() - started
        if window_wait >= sources.stall_timeout:
            if window_bytes < MIN_RATE * window_wait:
                rate = f"{window_bytes / window_wait:.0f} bytes/s"
                raise sources.stalled(connector, str(digest), trickle=rate)
            window_bytes, window_wait = 0, 0.0
        yield data


def _as_bytes(connector: Connector, digest: Digest, chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise UpstreamError(
        f"connector {connector.name!r} sent a {type(chunk).__name__} chunk, not bytes",
        connector=connector.name,
        digest=digest,
    )


def _check_whole(flight: BlobFlight, connector: Connector, size: int) -> None:
    """``UpstreamError`` (resumable) when the stream ended before the blob did."""
    if flight.received < size:
        raise UpstreamError(
            f"connector {connector.name!r} ended the blob after {flight.received} of {size} bytes",
            connector=connector.name,
            digest=flight.digest,
        )
