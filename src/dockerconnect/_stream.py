"""``BlobStream``: the bytes of one blob, from an offset, as an async iterable."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

from dockerconnect._closing import AsyncClosing
from dockerconnect._digest import Digest

__all__ = ["CHUNK_SIZE", "BlobStream"]

#: The size of chunks the library reads and writes: large enough that a hash
#: update or a thread hop is cheap relative to the work, small enough that
#: memory stays bounded.
CHUNK_SIZE = 1024 * 1024


class BlobStream(AsyncClosing):
    """A blob's bytes from ``offset`` to its end, as an async iterable of chunks.

    ``size`` is the blob's total size, not the number of bytes the stream
    yields. ``source`` names where the bytes came from: a registry's own name
    or a connector's name. Use it as an async context manager (or call
    :meth:`aclose`) so whatever it wraps (a file, an HTTP response) is closed
    even when it is not read to the end. A stream can be iterated once.

    A consumer that verifies the bytes itself (a resolver hashing each blob
    into its cache) calls :meth:`defer_verification` before iterating, so a
    source that would also hash them (an ``HttpConnector`` with
    ``verify_blobs=True``) may skip it and each byte is hashed once.
    """

    __slots__ = (
        "_chunks",
        "_chunks_closed",
        "_closed",
        "_deferred",
        "_iterator",
        "digest",
        "offset",
        "size",
        "source",
    )

    def __init__(
        self,
        digest: Digest | str,
        size: int,
        chunks: AsyncIterable[bytes],
        *,
        offset: int = 0,
        source: str = "",
    ) -> None:
        self.digest = Digest.parse(digest)
        self.size = size
        self.offset = offset
        self.source = source
        self._chunks = chunks
        self._iterator: AsyncGenerator[bytes, None] | None = None
        self._closed = False
        self._chunks_closed = False
        self._deferred = False

    @property
    def length(self) -> int:
        """How many bytes this stream yields: ``size - offset``."""
        return self.size - self.offset

    def defer_verification(self) -> None:
        """Say that the consumer verifies these bytes itself.

        The consumer takes on the check (digest and size) that the stream's
        source might otherwise make; a source that would verify the bytes may
        skip it. The stream still never yields more than its length. Has an
        effect only before iteration starts: a source already hashing keeps
        hashing. Chunks that have a ``defer_verification()`` method of their
        own are told.
        """
        if self._iterator is not None:
            return
        self._deferred = True
        defer: Any = getattr(self._chunks, "defer_verification", None)
        if defer is not None:
            defer()

    @property
    def verification_deferred(self) -> bool:
        """Whether :meth:`defer_verification` was called before iteration."""
        return self._deferred

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("a BlobStream can be iterated only once")
        self._iterator = self._iterate()
        return self._iterator

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self._chunks:
                if chunk:
                    yield chunk
        finally:
            await self._close_chunks()

    async def read(self) -> bytes:
        """Every remaining byte, joined (for small blobs and tests)."""
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Close what this stream wraps; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._iterator is not None:
            await self._iterator.aclose()
        await self._close_chunks()

    async def _close_chunks(self) -> None:
        if self._chunks_closed:
            return
        self._chunks_closed = True
        aclose: Any = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    def __repr__(self) -> str:
        return (
            f"BlobStream({str(self.digest)!r}, size={self.size}, offset={self.offset}, "
            f"source={self.source!r})"
        )
