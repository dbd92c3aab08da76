"""In-memory stores: fast, for tests and for embedding where nothing must persist.

Both keep everything in one instance (never in module state), so two stores
never share content. They follow the same contracts as the filesystem stores
and pass the same conformance suites (:mod:`dockerconnect.testing`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import anyio.lowlevel

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import (
    BLOB_MEDIA_TYPE,
    BlobWriter,
    CachedBlob,
    CachedManifest,
    TagRecord,
)
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._stores import check_offset, check_source, check_time, check_writable, ingest
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import BlobUploadInvalid, InvalidInput

__all__ = ["MemoryBlobStore", "MemoryManifestStore"]

_G = TypeVar("_G")
_K = TypeVar("_K")
_V = TypeVar("_V")


class MemoryBlobStore:
    """A :class:`~dockerconnect.BlobStore` that holds blobs in a dict.

    Streams yield chunks of at most :data:`~dockerconnect._stream.CHUNK_SIZE`
    bytes. ``name`` is what returned streams report as their ``source``.
    It is also a :class:`~dockerconnect.UsageLog`: origins and uses are
    kept in dicts beside the blobs (``flush`` has nothing to write).
    """

    def __init__(self, *, name: str = "memory") -> None:
        self.name = name
        self._blobs: dict[Digest, bytes] = {}
        # digest -> (source, cached_at); source None: pushed (sticky).
        self._marks: dict[Digest, tuple[str | None, float]] = {}
        self._used: dict[Digest, float] = {}
        self._busy: Counter[Digest] = Counter()

    async def stat(self, digest: Digest) -> Descriptor | None:
        digest = Digest.parse(digest)
        await anyio.lowlevel.checkpoint()
        data = self._blobs.get(digest)
        if data is None:
            return None
        return Descriptor(BLOB_MEDIA_TYPE, digest, len(data))

    async def open(self, digest: Digest, *, offset: int = 0) -> BlobStream | None:
        digest = Digest.parse(digest)
        await anyio.lowlevel.checkpoint()
        data = self._blobs.get(digest)
        if data is None:
            return None
        check_offset(offset, len(data), digest)
        return BlobStream(digest, len(data), _chunks(data, offset), offset=offset, source=self.name)

    def ingest(
        self, digest: Digest, size: int | None = None
    ) -> AbstractAsyncContextManager[BlobWriter]:
        return ingest(
            digest, size, lambda verifier: _MemoryWriter(self._blobs, verifier), busy=self._busy
        )

    async def delete(self, digest: Digest) -> bool:
        digest = Digest.parse(digest)
        await anyio.lowlevel.checkpoint()
        self._marks.pop(digest, None)
        self._used.pop(digest, None)
        return self._blobs.pop(digest, None) is not None

    # --- UsageLog -------------------------------------------------------------

    async def mark(self, digest: Digest, *, source: str | None, at: float) -> None:
        """See :class:`~dockerconnect.UsageLog`."""
        digest, at = Digest.parse(digest), check_time(at)
        await anyio.lowlevel.checkpoint()
        current = self._marks.get(digest)
        if source is None:
            self._marks[digest] = (None, at)
        elif current is None:
            self._marks[digest] = (check_source(source), at)
            self.touch(digest, at)

    def touch(self, digest: Digest, at: float) -> None:
        """See :class:`~dockerconnect.UsageLog`."""
        digest, at = Digest.parse(digest), check_time(at)
        if at > self._used.get(digest, -math.inf):
            self._used[digest] = at

    async def flush(self) -> None:
        """Nothing to write: uses are kept in memory."""
        await anyio.lowlevel.checkpoint()

    async def cached(self) -> list[CachedBlob]:
        """See :class:`~dockerconnect.UsageLog`."""
        await anyio.lowlevel.checkpoint()
        found = []
        for digest, (source, cached_at) in self._marks.items():
            data = self._blobs.get(digest)
            if source is None or data is None:
                continue
            used = self._used.get(digest, cached_at)
            found.append(CachedBlob(digest, len(data), source, cached_at, used))
        return sorted(found, key=lambda b: (b.last_used, str(b.digest)))

    async def remove_cached(self, digest: Digest, *, unused_since: float) -> bool:
        """See :class:`~dockerconnect.UsageLog`."""
        digest, unused_since = Digest.parse(digest), check_time(unused_since, bound=True)
        await anyio.lowlevel.checkpoint()
        mark = self._marks.get(digest)
        if mark is None or mark[0] is None or digest not in self._blobs:
            return False
        if self._busy[digest] or self._used.get(digest, mark[1]) > unused_since:
            return False
        # Open streams hold the bytes themselves: they read on, whole.
        del self._blobs[digest], self._marks[digest]
        self._used.pop(digest, None)
        return True

    def __repr__(self) -> str:
        return f"MemoryBlobStore(name={self.name!r}, blobs={len(self._blobs)})"


class _MemoryWriter:
    """Collects chunks; publishes the joined bytes into the store on commit."""

    __slots__ = ("_blobs", "_chunks", "_state", "_verifier")

    def __init__(self, blobs: dict[Digest, bytes], verifier: DigestVerifier) -> None:
        self._blobs = blobs
        self._verifier = verifier
        self._chunks: list[bytes] = []
        self._state = "open"

    @property
    def written(self) -> int:
        return self._verifier.count

    async def write(self, data: bytes) -> None:
        check_writable(self._state, self._verifier.digest)
        try:
            await self._verifier.aupdate(data)
        except BaseException:
            self._fail()
            raise
        # A caller may reuse a mutable buffer after the write returns.
        self._chunks.append(bytes(data))
        await anyio.lowlevel.checkpoint()

    async def read_back(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of what was written so far.

        Raises ``BlobUploadInvalid`` once the writer is committed or failed.
        """
        await anyio.lowlevel.checkpoint()
        if self._state != "open":
            raise BlobUploadInvalid(
                "the writer is closed: read the blob from the store",
                digest=self._verifier.digest,
            )
        start = 0
        for chunk in self._chunks:
            end = start + len(chunk)
            if start <= offset < end:
                return chunk[offset - start : min(end, offset + size) - start]
            start = end
        return b""

    async def commit(self) -> Descriptor:
        check_writable(self._state, self._verifier.digest)
        try:
            self._verifier.verify()
        except BaseException:
            self._fail()
            raise
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._state = "committed"
        self._blobs.setdefault(self._verifier.digest, data)
        await anyio.lowlevel.checkpoint()
        return Descriptor(BLOB_MEDIA_TYPE, self._verifier.digest, len(data))

    def _fail(self) -> None:
        self._state = "failed"
        self._chunks.clear()

    async def close(self) -> None:
        if self._state == "open":
            self._state = "closed"
        self._chunks.clear()


async def _chunks(data: bytes, offset: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(offset, len(data), CHUNK_SIZE):
        await anyio.lowlevel.checkpoint()
        yield bytes(view[start : start + CHUNK_SIZE])


class MemoryManifestStore:
    """A :class:`~dockerconnect.ManifestStore` that holds manifests and tags in dicts.

    It is also a :class:`~dockerconnect.ReferrersIndex`: manifests with a
    ``subject`` are indexed by ``put_manifest`` and unindexed by
    ``delete_manifest``; and a :class:`~dockerconnect.ManifestUsageLog`.

    Deleting a manifest leaves tags pointing at it alone: whether a tag may
    dangle is the caller's decision, as it is for every store.
    """

    def __init__(self) -> None:
        self._manifests: dict[str, dict[Digest, Manifest]] = {}
        self._tags: dict[str, dict[str, TagRecord]] = {}
        # repository -> subject -> referrer digest -> its referrer descriptor
        self._referrers: dict[str, dict[Digest, dict[Digest, Descriptor]]] = {}
        # (repository, digest) -> (source, cached_at); source None: pushed (sticky).
        self._marks: dict[tuple[str, Digest], tuple[str | None, float]] = {}
        self._used: dict[tuple[str, Digest], float] = {}

    async def get_manifest(self, repository: str, digest: Digest) -> Manifest | None:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        await anyio.lowlevel.checkpoint()
        return self._manifests.get(repository, {}).get(digest)

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        repository = validate_repository(repository)
        if not isinstance(manifest, Manifest):
            raise InvalidInput(f"expected a Manifest, not {type(manifest).__name__}")
        await anyio.lowlevel.checkpoint()
        self._manifests.setdefault(repository, {})[manifest.digest] = manifest
        if manifest.subject is not None:
            by_subject = self._referrers.setdefault(repository, {})
            by_subject.setdefault(manifest.subject.digest, {})[manifest.digest] = (
                manifest.referrer()
            )

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        await anyio.lowlevel.checkpoint()
        self._marks.pop((repository, digest), None)
        self._used.pop((repository, digest), None)
        manifest = self._manifests.get(repository, {}).get(digest)
        if manifest is not None and manifest.subject is not None:
            subjects = self._referrers.get(repository)
            unindexed = subjects is not None and _pop(subjects, manifest.subject.digest, digest)
            if unindexed and not subjects:
                del self._referrers[repository]
        return _pop(self._manifests, repository, digest)

    # --- ManifestUsageLog -------------------------------------------------------

    async def mark_manifest(
        self, repository: str, digest: Digest, *, source: str | None, at: float
    ) -> None:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        key = (validate_repository(repository), Digest.parse(digest))
        at = check_time(at)
        await anyio.lowlevel.checkpoint()
        if source is None:
            self._marks[key] = (None, at)
        elif key not in self._marks:
            self._marks[key] = (check_source(source), at)
            self.touch_manifest(*key, at)

    def touch_manifest(self, repository: str, digest: Digest, at: float) -> None:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        key = (validate_repository(repository), Digest.parse(digest))
        at = check_time(at)
        if at > self._used.get(key, -math.inf):
            self._used[key] = at

    async def flush(self) -> None:
        """Nothing to write: uses are kept in memory."""
        await anyio.lowlevel.checkpoint()

    async def cached_manifests(self) -> list[CachedManifest]:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        await anyio.lowlevel.checkpoint()
        found = []
        for (repository, digest), (source, cached_at) in self._marks.items():
            manifest = self._manifests.get(repository, {}).get(digest)
            if source is None or manifest is None:
                continue
            used = self._used.get((repository, digest), cached_at)
            found.append(CachedManifest(repository, digest, manifest.size, source, cached_at, used))
        return sorted(found, key=lambda m: (m.last_used, m.repository, str(m.digest)))

    async def remove_cached_manifest(
        self, repository: str, digest: Digest, *, unused_since: float
    ) -> bool:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        key = (validate_repository(repository), Digest.parse(digest))
        unused_since = check_time(unused_since, bound=True)
        await anyio.lowlevel.checkpoint()
        mark = self._marks.get(key)
        if mark is None or mark[0] is None or self._used.get(key, mark[1]) > unused_since:
            return False
        removed = await self.delete_manifest(*key)
        self._marks.pop(key, None)
        self._used.pop(key, None)
        return removed

    async def referrers(self, repository: str, subject: Digest) -> list[Descriptor]:
        """See :class:`~dockerconnect.ReferrersIndex`."""
        repository = validate_repository(repository)
        subject = Digest.parse(subject)
        await anyio.lowlevel.checkpoint()
        found = self._referrers.get(repository, {}).get(subject, {})
        return [found[d] for d in sorted(found, key=str)]

    async def get_tag(self, repository: str, tag: str) -> TagRecord | None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        await anyio.lowlevel.checkpoint()
        return self._tags.get(repository, {}).get(tag)

    async def set_tag(self, repository: str, tag: str, record: TagRecord) -> None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        if not isinstance(record, TagRecord):
            raise InvalidInput(f"expected a TagRecord, not {type(record).__name__}")
        await anyio.lowlevel.checkpoint()
        self._tags.setdefault(repository, {})[tag] = record

    async def delete_tag(self, repository: str, tag: str) -> bool:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        await anyio.lowlevel.checkpoint()
        return _pop(self._tags, repository, tag)

    async def tags(self, repository: str) -> list[str] | None:
        repository = validate_repository(repository)
        await anyio.lowlevel.checkpoint()
        tags = self._tags.get(repository)
        if tags:
            return sorted(tags)
        if self._manifests.get(repository):
            return []
        return None

    async def repositories(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        return sorted(name for name in self._manifests.keys() | self._tags.keys())

    def __repr__(self) -> str:
        held = self._manifests.keys() | self._tags.keys()
        return f"MemoryManifestStore(repositories={len(held)})"


def _pop(table: dict[_G, dict[_K, _V]], group: _G, key: _K) -> bool:
    entries = table.get(group)
    if entries is None or key not in entries:
        return False
    del entries[key]
    # An emptied group is forgotten, so listings only show what is held.
    if not entries:
        del table[group]
    return True
