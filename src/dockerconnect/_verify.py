"""The one verification path: every byte the library checks is hashed here.

A digest names bytes; this module is the only code that hashes them.
:class:`DigestVerifier` checks a stream of chunks against a digest and a
size (the size checks live here too, with one error class,
:class:`~dockerconnect.errors.SizeInvalid`); :func:`hashes_to` checks bytes
held in memory (manifests); :class:`PipelinedVerifier` overlaps hashing in a
worker thread with the next network read, for connectors that verify what
they download.

A stream that has already been verified, or whose consumer verifies it
itself, says so (:meth:`dockerconnect.BlobStream.defer_verification`), so
each byte is hashed once on its way from an upstream to a reader.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from typing import TYPE_CHECKING

import anyio.to_thread

from dockerconnect.errors import DigestMismatch, SizeInvalid, Unsupported

if TYPE_CHECKING:
    from dockerconnect._digest import Digest

__all__ = [
    "THREAD_HASH_THRESHOLD",
    "VERIFIED_ALGORITHMS",
    "DigestVerifier",
    "PipelinedVerifier",
    "hashes_to",
    "new_hash",
]

#: The algorithms this library computes, with the length of their hex form.
VERIFIED_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

#: Chunks at least this large are hashed in a worker thread (hashlib releases
#: the GIL for large buffers); smaller ones are cheaper to hash inline.
THREAD_HASH_THRESHOLD = 256 * 1024


def new_hash(algorithm: str, *, digest: str | None = None) -> hashlib._Hash:
    """A fresh hash object for ``algorithm``; ``Unsupported`` if it cannot be computed."""
    if algorithm not in VERIFIED_ALGORITHMS:
        raise Unsupported(
            f"digest algorithm {algorithm!r} cannot be verified "
            f"(supported: {', '.join(sorted(VERIFIED_ALGORITHMS))})",
            digest=digest,
        )
    return hashlib.new(algorithm)


def hashes_to(data: bytes, digest: Digest) -> bool:
    """Whether ``data`` (held in memory, such as a manifest) hashes to ``digest``."""
    hasher = new_hash(digest.algorithm, digest=str(digest))
    hasher.update(data)
    return hasher.hexdigest() == digest.hex


class DigestVerifier:
    """Feed chunks, then check digest and size at the end.

    The single place where streamed bytes are checked against what they claim
    to be: every store, connector and resolver path uses it. ``size`` is the
    expected total, or ``None`` to accept any length. Exceeding the expected
    size fails as soon as it happens (:class:`SizeInvalid`), so a runaway
    source is cut off early. With ``hashing=False`` only the size is checked:
    for bytes whose consumer verifies them itself.
    """

    __slots__ = ("_hash", "count", "digest", "size")

    def __init__(self, digest: Digest | str, size: int | None = None, *, hashing: bool = True):
        from dockerconnect._digest import Digest

        self.digest = Digest.parse(digest)
        self.size = size
        self._hash = new_hash(self.digest.algorithm, digest=str(self.digest)) if hashing else None
        self.count = 0

    @property
    def hashing(self) -> bool:
        """Whether this verifier checks the digest, not only the size."""
        return self._hash is not None

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash ``chunk`` inline."""
        self.account(len(chunk))
        if self._hash is not None:
            self._hash.update(chunk)

    async def aupdate(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash ``chunk``, in a worker thread when it is large enough to pay off."""
        self.account(len(chunk))
        if self._hash is None:
            return
        if len(chunk) >= THREAD_HASH_THRESHOLD:
            await anyio.to_thread.run_sync(self._hash.update, chunk)
        else:
            self._hash.update(chunk)

    def account(self, n: int) -> None:
        """Count ``n`` more bytes; :class:`SizeInvalid` once they pass the size."""
        self.count += n
        if self.size is not None and self.count > self.size:
            raise SizeInvalid(
                f"content is longer than its declared size {self.size}",
                digest=str(self.digest),
            )

    def _hash_update(self, chunk: bytes) -> None:
        # The part of update() a worker thread runs: accounting stays on the loop.
        if self._hash is not None:
            self._hash.update(chunk)

    @property
    def ok(self) -> bool:
        """Whether what was fed so far is exactly the expected content."""
        try:
            self.verify()
        except DigestMismatch:
            return False
        return True

    def verify(self) -> None:
        """Raise unless the bytes fed are exactly the expected content.

        :class:`SizeInvalid` for a wrong length, :class:`DigestMismatch` for
        wrong bytes (never the latter when not hashing).
        """
        if self.size is not None and self.count != self.size:
            raise SizeInvalid(
                f"content is {self.count} bytes, expected {self.size}", digest=str(self.digest)
            )
        if self._hash is None:
            return
        actual = self._hash.copy().hexdigest()
        if actual != self.digest.hex:
            raise DigestMismatch(
                f"content hashes to {self.digest.algorithm}:{actual}, expected {self.digest}",
                digest=str(self.digest),
            )


class PipelinedVerifier:
    """A :class:`DigestVerifier` fed through a thread pool, one job at a time.

    Chunk N is hashed in a worker thread while chunk N+1 is received, instead
    of the receiving loop waiting for each hash (a thread round trip per
    chunk that overlaps nothing). Sizes are counted at once, on the caller's
    side, so a runaway source fails on the chunk that overruns. Only one
    task may feed it; jobs run in order.
    """

    __slots__ = ("_job", "_pool", "verifier")

    def __init__(
        self, verifier: DigestVerifier, pool: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        self.verifier = verifier
        self._pool = pool
        self._job: concurrent.futures.Future[None] | None = None

    async def feed(self, chunk: bytes) -> None:
        """Account for ``chunk`` now and hash it, in the pool when it is large."""
        self.verifier.account(len(chunk))
        if not self.verifier.hashing:
            return
        await self.drain()
        if len(chunk) >= THREAD_HASH_THRESHOLD:
            self._job = self._pool.submit(self.verifier._hash_update, chunk)
        else:
            self.verifier._hash_update(chunk)

    async def drain(self) -> None:
        """Wait, without blocking the event loop, for the job in the pool."""
        job, self._job = self._job, None
        if job is None:
            return
        if not job.done():
            await anyio.to_thread.run_sync(job.result)
        job.result()

    async def verify(self) -> None:
        """Finish hashing, then :meth:`DigestVerifier.verify`."""
        await self.drain()
        self.verifier.verify()
