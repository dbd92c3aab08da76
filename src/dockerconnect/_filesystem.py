"""Filesystem stores: crash-safe, atomic, never touching a path outside their root.

On-disk layout
--------------

Both stores live under one root directory (they may share it, or each have
its own)::

    <root>/
    ├── blobs/<algorithm>/<hex[:2]>/<hex>      a blob's exact bytes
    ├── repositories/<repository>/             one directory per ``/``-separated component
    │   ├── _manifests/<algorithm>/<hex>       "<media type>\\n" then the manifest's exact bytes
    │   ├── _referrers/<algorithm>/<hex>/      the referrers of the subject <algorithm>:<hex>:
    │   │   └── <algorithm>-<hex>.json         one referrer's descriptor (Descriptor.to_json)
    │   ├── _referrers/<algorithm>/<hex>.lock  taken while that subject's entries change
    │   ├── _tags/<tag>.json                   a TagRecord:
    │   │                                      {"confirmed_at", "digest", "media_type", "source"}
    │   ├── _usage/<algorithm>/<hex>.json      a manifest's origin (ManifestUsageLog)
    │   └── _usage.lock                        taken to mark, flush or remove
    ├── usage/<algorithm>/<hex[:2]>/<hex>.json a blob's origin: {"source", "at"} (UsageLog)
    ├── usage/<algorithm>/<hex[:2]>.lock       taken to mark, flush, remove or re-commit
    └── tmp/<random>.tmp                       files being written

Every path is built from validated parts only: repository components match
``[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`` (never ``.``, ``..`` or empty, never
starting with ``_``, so they cannot collide with ``_manifests`` / ``_tags``),
tags match ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`` (no ``/``, never ``.`` or
``..``), and a :class:`~dockerconnect.Digest`'s parts hold neither ``/`` nor
``.``. Invalid names, tags and digests are refused before any I/O. Tags are
case-sensitive, so the root should be on a case-sensitive filesystem.

Crash safety
------------

Every file is written to ``tmp/`` (the same filesystem as its destination),
``fsync``-ed, then renamed into place with :func:`os.replace` and its
directory ``fsync``-ed: a reader sees the whole file or nothing, and a process
killed mid-write leaves only a file in ``tmp/``. While it writes, a writer
holds an exclusive ``flock`` on its temporary file; constructing a store
removes every file in ``tmp/`` that nobody holds (the kernel drops the lock of
a process that dies), so leftovers of crashed writers disappear while live
writers of other instances or processes sharing the root are left alone.
Without ``fcntl`` (Windows) a file that is still open cannot be removed, which
serves the same purpose.

The referrers index (:class:`~dockerconnect.ReferrersIndex`) follows one
rule that a crash cannot break: an entry counts only while the manifest it
names is stored. ``put_manifest`` writes the entry before the manifest and
``delete_manifest`` removes it after, each file atomically, so a crash in
between leaves an entry that is ignored, never a stored referrer that is not
listed. Changes to one subject's entries hold an ``flock`` on its ``.lock``
file, so processes that put and delete the same referrer at once agree.

The blob store is also a :class:`~dockerconnect.UsageLog` (see
:mod:`dockerconnect._fsusage`): a blob's last use is its file's modification
time, and marking, flushing uses, removing a cached blob and committing a
blob that is already held all take the ``flock`` of the blob's bucket, so
processes sharing the root never remove a blob another one is committing.

Blob writers hash through :class:`~dockerconnect.DigestVerifier` and publish
only verified bytes. Two writers of the same digest at once both succeed and
leave one file. Reads stream chunks of at most
:data:`~dockerconnect._stream.CHUNK_SIZE` bytes, one worker-thread hop per
chunk, the file's last few bytes (up to :data:`TAIL`) read in the same hop as
the chunk before them; a tag and the manifest it names are read in one hop
(:meth:`FilesystemManifestStore.get_tagged`). Blocking file work runs in
worker threads (:func:`anyio.to_thread.run_sync`), except in the constructors,
which create the root and clean ``tmp/`` synchronously: build stores at
start-up, or in a worker thread. ``OSError`` surfaces as
:class:`~dockerconnect.errors.StorageError` with the ``OSError`` as its
``__cause__``.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections import Counter
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread

from dockerconnect import _fsroot
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._fsroot import LOCK_SUFFIX, Root, locked, read_or_none, run
from dockerconnect._fsusage import ManifestUsage, Usage
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import (
    BLOB_MEDIA_TYPE,
    BlobWriter,
    CachedBlob,
    CachedManifest,
    TagRecord,
)
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._stores import check_offset, check_time, check_writable, ingest
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect._together import together
from dockerconnect.errors import (
    BlobUploadInvalid,
    DigestInvalid,
    DockerConnectError,
    InvalidInput,
    ManifestInvalid,
    NameInvalid,
    StorageError,
    TagInvalid,
)

__all__ = ["FilesystemBlobStore", "FilesystemManifestStore"]


BLOBS_DIR: Final = "blobs"
REPOSITORIES_DIR: Final = "repositories"
MANIFESTS_DIR: Final = "_manifests"
TAGS_DIR: Final = "_tags"
REFERRERS_DIR: Final = "_referrers"
TAG_SUFFIX: Final = ".json"


class FilesystemBlobStore:
    """A :class:`~dockerconnect.BlobStore` over files under ``root``.

    ``root`` (a ``str`` or path-like) is created if missing; see the module
    documentation for the layout and the crash-safety rules. ``name`` is what
    returned streams report as their ``source``.
    """

    def __init__(self, root: str | os.PathLike[str], *, name: str = "filesystem") -> None:
        self._root = Root(root)
        self.name = name
        self._busy: Counter[Digest] = Counter()
        self._usage = Usage(self._root, self._path, self._busy)

    @property
    def root(self) -> Path:
        """The absolute root directory."""
        return self._root.path

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob ``digest`` lives (whether or not it is there)."""
        return Path(self._path(Digest.parse(digest)))

    def _path(self, digest: Digest) -> str:
        return self._root.join(BLOBS_DIR, digest.algorithm, digest.hex[:2], digest.hex)

    async def stat(self, digest: Digest) -> Descriptor | None:
        digest = Digest.parse(digest)
        # Only verifiable digests can ever be ingested; others are never here.
        if not digest.verifiable:
            return None
        size = await run("stat blob", _size_or_none, self._path(digest))
        if size is None:
            return None
        return Descriptor(BLOB_MEDIA_TYPE, digest, size)

    async def open(self, digest: Digest, *, offset: int = 0) -> BlobStream | None:
        digest = Digest.parse(digest)
        check_offset(offset, None, digest)
        if not digest.verifiable:
            return None
        opened = await run("open blob", _open_at, self._path(digest), offset)
        if opened is None:
            return None
        file, first, size = opened
        check_offset(offset, size, digest)
        chunks = _FileChunks(file, first, offset, size)
        return BlobStream(digest, size, chunks, offset=offset, source=self.name)

    def ingest(
        self, digest: Digest, size: int | None = None
    ) -> AbstractAsyncContextManager[BlobWriter]:
        return ingest(
            digest,
            size,
            lambda v: _FileWriter(self._root, v, self._path(v.digest), self._usage),
            busy=self._busy,
        )

    async def delete(self, digest: Digest) -> bool:
        digest = Digest.parse(digest)
        if not digest.verifiable:
            return False
        removed = await run("delete blob", self._root.remove, self._path(digest))
        await run("delete blob", self._usage.forget, digest)
        return removed

    # --- UsageLog ---------------------------------------------------------------

    async def mark(self, digest: Digest, *, source: str | None, at: float) -> None:
        """See :class:`~dockerconnect.UsageLog`."""
        digest, at = Digest.parse(digest), check_time(at)
        await run("mark blob", self._usage.mark, digest, source, at)

    def touch(self, digest: Digest, at: float) -> None:
        """See :class:`~dockerconnect.UsageLog`; no I/O until :meth:`flush`."""
        self._usage.touch(Digest.parse(digest), check_time(at))

    async def flush(self) -> None:
        """See :class:`~dockerconnect.UsageLog`."""
        uses = self._usage.pending()
        await run("record blob use", self._usage.write_uses, uses)
        self._usage.written(uses)

    async def cached(self) -> list[CachedBlob]:
        """See :class:`~dockerconnect.UsageLog`."""
        return await run("list cached blobs", self._usage.cached)

    async def remove_cached(self, digest: Digest, *, unused_since: float) -> bool:
        """See :class:`~dockerconnect.UsageLog`."""
        digest, unused_since = Digest.parse(digest), check_time(unused_since, bound=True)
        if not digest.verifiable:
            return False
        return await run("remove cached blob", self._usage.remove_cached, digest, unused_since)

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r}, name={self.name!r})"


#: Blobs of at most this many bytes (declared when the ingest begins) are
#: hashed as they are written and kept in memory until :meth:`_FileWriter.commit`
#: writes them, in the thread hop that syncs and publishes them: most layers
#: and every config and manifest-sized blob. Cold, 120 blobs of 1 MiB took
#: 0.83-0.87x the wall time in process (benchmarks/results/profiles).
SMALL_BLOB: Final = CHUNK_SIZE + CHUNK_SIZE // 2


class _FileWriter:
    """Writes into a locked temporary file; publishes it on a verified commit.

    Writes smaller than a chunk are coalesced so each thread hop moves about
    :data:`CHUNK_SIZE` bytes, and the temporary file is created by the first
    hop: a small blob costs one hop in all (at ``commit``), and an ingest
    abandoned before its first chunk touches no file. A chunk-sized write is
    hashed and written at the same time, in two worker threads. A blob of at
    most :data:`SMALL_BLOB` bytes is hashed on the caller's side and written
    only by ``commit``. Hashing goes
    through the verifier as bytes arrive, so a source that sends too much
    fails on the write that overflows.
    """

    __slots__ = (
        "_buffer",
        "_fd",
        "_final",
        "_lock",
        "_on_disk",
        "_root",
        "_state",
        "_temp",
        "_usage",
        "_verifier",
    )

    def __init__(self, root: Root, verifier: DigestVerifier, final: str, usage: Usage) -> None:
        self._root = root
        self._usage = usage
        self._verifier = verifier
        self._final = final
        # Set from a worker thread by ``_append``; read by ``_release``.
        self._fd: int | None = None
        self._temp = ""
        self._buffer = bytearray()
        self._state = "open"
        # Keeps the file descriptor open while ``read_back`` uses it: the
        # threads that publish or discard the file take it to close it.
        self._lock = threading.Lock()
        self._on_disk = 0

    @property
    def written(self) -> int:
        return self._verifier.count

    async def write(self, data: bytes) -> None:
        check_writable(self._state, self._verifier.digest)
        try:
            size = self._verifier.size
            if size is not None and size <= SMALL_BLOB:
                # A small blob is hashed here and held until commit, which
                # writes it in the one thread hop it makes anyway: no hop
                # (and no worker thread competing for a core) before the
                # blob is verified and its last byte released.
                self._verifier.update(data)
                self._buffer += data
            elif len(data) >= CHUNK_SIZE:
                await self._flush()
                await self._hash_and_write(data)
            else:
                await self._verifier.aupdate(data)
                self._buffer += data
                if len(self._buffer) >= CHUNK_SIZE:
                    await self._flush()
        except BaseException:
            await self._fail()
            raise

    def verify(self) -> None:
        """Check what was written against the digest and size, publishing nothing.

        Raises :class:`~dockerconnect.errors.DigestMismatch` (or ``SizeInvalid``)
        like :meth:`commit` would, and leaves the writer unusable when it does.
        A flight calls this to release a blob's last byte to its readers
        before the (slower) durable :meth:`commit`.
        """
        check_writable(self._state, self._verifier.digest)
        try:
            self._verifier.verify()
        except BaseException:
            self._state = "failed"
            raise

    async def commit(self) -> Descriptor:
        check_writable(self._state, self._verifier.digest)
        try:
            self._verifier.verify()
            rest, self._buffer = bytes(self._buffer), bytearray()
            await run("publish blob", self._publish, rest)
        except BaseException:
            await self._fail()
            raise
        self._state = "committed"
        return Descriptor(BLOB_MEDIA_TYPE, self._verifier.digest, self._verifier.count)

    async def _hash_and_write(self, data: bytes) -> None:
        # Hash here while a worker thread writes. An overflow is detected before
        # the hash's first await, so the write is cancelled before it starts.
        await together(
            lambda: self._verifier.aupdate(data),
            lambda: run("write blob", self._append, data),
        )

    async def _flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await run("write blob", self._append, data)

    def _append(self, data: bytes) -> None:
        """Write ``data`` to the temporary file, creating it first if needed."""
        if self._fd is None:
            with self._lock:
                self._fd, self._temp = self._root.create_temp()
        # Not under the lock: writes and read-backs touch different offsets,
        # and the file is only closed after the last write (commit or failure).
        _fsroot.write_all(self._fd, data)
        self._on_disk += len(data)

    async def read_back(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of what is already in the file.

        Bytes still in the coalescing buffer are not returned (the answer may
        be short or empty); after a commit or a failure this raises
        ``BlobUploadInvalid``: read the published blob instead.
        """
        return await anyio.to_thread.run_sync(self._pread, offset, size)

    def _pread(self, offset: int, size: int) -> bytes:
        with self._lock:
            # While a commit syncs the file its bytes stay readable here; once
            # it is renamed (or discarded), readers go to the store.
            open_ = self._state == "open" or (self._state == "publishing" and self._fd is not None)
            if not open_:
                raise BlobUploadInvalid(
                    "the writer is closed: read the blob from the store",
                    digest=self._verifier.digest,
                )
            size = min(size, self._on_disk - offset)
            if self._fd is None or size <= 0:
                return b""
            return os.pread(self._fd, size, offset)

    def _publish(self, rest: bytes) -> None:
        with self._lock:
            self._state = "publishing"
        if self._usage.refresh_held(self._final, self._verifier.digest):
            # Already stored, and now counted as used under the bucket lock, so
            # a removal of it in another process cannot slip in between.
            self._discard_locked()
            return
        self._append(rest)
        fd = self._fd
        assert fd is not None
        # The slow part (fsync) runs with the file still open to read_back;
        # only the rename and the directory's fsync happen without it.
        try:
            os.fsync(fd)
        except BaseException:
            self._discard_locked()
            raise
        with self._lock:
            self._fd = None
        self._root.publish(fd, self._temp, self._final, replace=False, synced=True)

    async def _fail(self) -> None:
        self._state = "failed"
        await self._release()

    async def close(self) -> None:
        """Discard whatever was not committed; idempotent."""
        if self._state == "open":
            self._state = "closed"
        await self._release()

    async def _release(self) -> None:
        self._buffer = bytearray()
        if self._fd is None:
            return
        # Shielded: a cancelled ingest must still remove its temporary file.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._discard_locked)

    def _discard_locked(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                _fsroot.discard(fd, self._temp)


class _ParsedManifests:
    """Manifests read, verified and parsed lately, by digest (bounded, least recent out).

    Every read still reads the file: a file whose bytes equal the ones
    verified and parsed before is that same manifest (content is addressed by
    digest, and a :class:`~dockerconnect.Manifest` is immutable), so its
    hashing and parsing are skipped. Any other bytes are verified as usual.
    """

    __slots__ = ("_bytes", "_entries")

    #: Bytes of manifest content held at most.
    LIMIT: Final = 1024 * 1024

    def __init__(self) -> None:
        self._entries: dict[Digest, tuple[bytes, Manifest]] = {}
        self._bytes = 0

    def get(self, digest: Digest, content: bytes) -> Manifest | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] != content:
            return None
        # Most recent last: dicts keep insertion order.
        del self._entries[digest]
        self._entries[digest] = entry
        return entry[1]

    def put(self, digest: Digest, content: bytes, manifest: Manifest) -> None:
        if len(content) > self.LIMIT // 4:
            return
        old = self._entries.pop(digest, None)
        if old is not None:
            self._bytes -= len(old[0])
        self._entries[digest] = (content, manifest)
        self._bytes += len(content)
        while self._bytes > self.LIMIT:
            evicted = self._entries.pop(next(iter(self._entries)))
            self._bytes -= len(evicted[0])


class _FileChunks:
    """The chunks of a blob file from an offset; closing closes the file.

    Each thread hop reads one chunk, and the rest of the file with it when
    that rest is at most :data:`TAIL` bytes (as a second chunk: no chunk is
    larger than :data:`CHUNK_SIZE`). The first hop is the one that opens the
    file, so a blob of up to a chunk and its tail costs one hop in all, and
    then no file stays open. A class rather than an async generator: a
    generator that was never iterated runs no ``finally`` when closed, and
    would leak the file.
    """

    __slots__ = ("_end", "_file", "_position", "_ready")

    def __init__(self, file: io.FileIO | None, ready: list[bytes], offset: int, size: int) -> None:
        self._file = file
        self._ready = ready
        self._position = offset + sum(len(c) for c in ready)
        self._end = size

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._ready:
            return self._ready.pop(0)
        file = self._file
        if file is None or self._position >= self._end:
            await self.aclose()
            raise StopAsyncIteration
        try:
            self._ready = await run("read blob", _read_chunks, file, self._end - self._position)
        except BaseException:
            await self.aclose()
            raise
        got = sum(len(c) for c in self._ready)
        if not got:
            await self.aclose()
            raise StorageError(
                f"blob file ended at byte {self._position}, expected {self._end} bytes"
            )
        self._position += got
        if self._position >= self._end:
            self._close_file()  # read to its end: closed now, not with the stream
        return self._ready.pop(0)

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    async def aclose(self) -> None:
        self._ready = []
        self._close_file()


class FilesystemManifestStore:
    """A :class:`~dockerconnect.ManifestStore` over files under ``root``.

    ``root`` (a ``str`` or path-like) is created if missing; see the module
    documentation for the layout and the crash-safety rules. Deleting a
    manifest leaves tags pointing at it alone: whether a tag may dangle is
    the caller's decision.

    It is also a :class:`~dockerconnect.ReferrersIndex`, kept on disk by
    ``put_manifest`` and ``delete_manifest`` and so surviving a restart, and
    a :class:`~dockerconnect.ManifestUsageLog` (see :mod:`dockerconnect._fsusage`).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Root(root)
        self._parsed = _ParsedManifests()
        self._usage = ManifestUsage(
            self._root,
            self._repository,
            self._manifest_path,
            self._delete_manifest,
            lambda: _list_repositories(self._root.join(REPOSITORIES_DIR)),
        )

    @property
    def root(self) -> Path:
        """The absolute root directory."""
        return self._root.path

    def _repository(self, repository: str, *parts: str) -> str:
        return self._root.join(REPOSITORIES_DIR, *repository.split("/"), *parts)

    def _manifest_path(self, repository: str, digest: Digest) -> str:
        return self._repository(repository, MANIFESTS_DIR, digest.algorithm, digest.hex)

    def _tag_path(self, repository: str, tag: str) -> str:
        return self._repository(repository, TAGS_DIR, tag + TAG_SUFFIX)

    async def get_manifest(self, repository: str, digest: Digest) -> Manifest | None:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        if not digest.verifiable:
            return None
        path = self._manifest_path(repository, digest)
        content = await run("read manifest", read_or_none, path)
        if content is None:
            return None
        return await self._manifest_of(path, digest, content)

    async def _manifest_of(self, path: str, digest: Digest, content: bytes) -> Manifest:
        """The manifest a file read from ``path`` holds, verified against ``digest``."""
        known = self._parsed.get(digest, content)
        if known is not None:
            return known
        media_type, newline, data = content.partition(b"\n")
        if not newline or not media_type.isascii():
            raise StorageError(f"manifest file has no media type line: {path}")
        verifier = DigestVerifier(digest, len(data))
        await verifier.aupdate(data)
        verifier.verify()
        manifest = Manifest.parse(data, media_type.decode("ascii"))
        self._parsed.put(digest, content, manifest)
        return manifest

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        repository = validate_repository(repository)
        if not isinstance(manifest, Manifest):
            raise InvalidInput(f"expected a Manifest, not {type(manifest).__name__}")
        path = self._manifest_path(repository, manifest.digest)
        content = manifest.media_type.encode("ascii") + b"\n" + manifest.data
        if manifest.subject is None:
            await run("write manifest", self._root.write_file, path, content)
            return
        await run("write manifest", self._put_referrer, repository, manifest, path, content)

    def _put_referrer(self, repository: str, manifest: Manifest, path: str, content: bytes) -> None:
        # The entry first: it only counts once the manifest is there too.
        assert manifest.subject is not None
        subject = manifest.subject.digest
        entry = manifest.referrer().to_json().encode()
        with self._subject_lock(repository, subject):
            self._root.write_file(self._referrer_path(repository, subject, manifest.digest), entry)
            self._root.write_file(path, content)

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        if not digest.verifiable:
            return False
        removed = await run("delete manifest", self._delete_manifest, repository, digest)
        await run("delete manifest", self._usage.forget, repository, digest)
        return removed

    def _delete_manifest(self, repository: str, digest: Digest) -> bool:
        path = self._manifest_path(repository, digest)
        content = read_or_none(path)
        subject = _subject_of(content) if content is not None else None
        if subject is None:
            return self._root.remove(path)
        # The manifest first: without it the entry no longer counts.
        with self._subject_lock(repository, subject):
            removed = self._root.remove(path)
            self._root.remove(self._referrer_path(repository, subject, digest))
        return removed

    # --- ManifestUsageLog ---------------------------------------------------------

    async def mark_manifest(
        self, repository: str, digest: Digest, *, source: str | None, at: float
    ) -> None:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        repository, digest = validate_repository(repository), Digest.parse(digest)
        at = check_time(at)
        await run("mark manifest", self._usage.mark, repository, digest, source, at)

    def touch_manifest(self, repository: str, digest: Digest, at: float) -> None:
        """See :class:`~dockerconnect.ManifestUsageLog`; no I/O until :meth:`flush`."""
        repository, digest = validate_repository(repository), Digest.parse(digest)
        self._usage.touch(repository, digest, check_time(at))

    async def flush(self) -> None:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        uses = self._usage.pending()
        await run("record manifest use", self._usage.write_uses, uses)
        self._usage.written(uses)

    async def cached_manifests(self) -> list[CachedManifest]:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        return await run("list cached manifests", self._usage.cached)

    async def remove_cached_manifest(
        self, repository: str, digest: Digest, *, unused_since: float
    ) -> bool:
        """See :class:`~dockerconnect.ManifestUsageLog`."""
        repository, digest = validate_repository(repository), Digest.parse(digest)
        unused_since = check_time(unused_since, bound=True)
        if not digest.verifiable:
            return False
        return await run(
            "remove cached manifest", self._usage.remove_cached, repository, digest, unused_since
        )

    async def referrers(self, repository: str, subject: Digest) -> list[Descriptor]:
        """See :class:`~dockerconnect.ReferrersIndex`."""
        repository = validate_repository(repository)
        subject = Digest.parse(subject)
        return await run("list referrers", self._referrers, repository, subject)

    def _referrers(self, repository: str, subject: Digest) -> list[Descriptor]:
        directory = self._repository(repository, REFERRERS_DIR, subject.algorithm, subject.hex)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found: list[Descriptor] = []
        for name in names:
            digest = _referrer_digest(name)
            if digest is None or not os.path.exists(self._manifest_path(repository, digest)):
                continue
            content = read_or_none(os.path.join(directory, name))
            if content is None:
                continue
            try:
                descriptor = Descriptor.parse(content)
            except ManifestInvalid as exc:
                raise StorageError(f"corrupt referrers entry {name}: {exc.message}") from exc
            if descriptor.digest != digest:
                raise StorageError(f"referrers entry {name} describes {descriptor.digest}")
            found.append(descriptor)
        return sorted(found, key=lambda d: str(d.digest))

    def _referrer_path(self, repository: str, subject: Digest, referrer: Digest) -> str:
        name = f"{referrer.algorithm}-{referrer.hex}{TAG_SUFFIX}"
        return self._repository(repository, REFERRERS_DIR, subject.algorithm, subject.hex, name)

    def _subject_lock(self, repository: str, subject: Digest) -> AbstractContextManager[None]:
        return locked(
            self._repository(
                repository, REFERRERS_DIR, subject.algorithm, subject.hex + LOCK_SUFFIX
            )
        )

    async def get_tag(self, repository: str, tag: str) -> TagRecord | None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        path = self._tag_path(repository, tag)
        content = await run("read tag", read_or_none, path)
        return None if content is None else _tag_record(path, content)

    async def get_tagged(
        self, repository: str, tag: str
    ) -> tuple[TagRecord, Manifest | None] | None:
        """:meth:`get_tag`, and the manifest it names, read in one thread hop.

        ``None`` when there is no such tag. The manifest is ``None`` when it is
        not stored, or when its file does not read back as that manifest:
        :meth:`get_manifest` tells which (and raises what it should), so a
        caller that needs the manifest asks it then, and a caller that does not
        (a stale tag that moved upstream) is not failed by a file it never uses.
        """
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        path = self._tag_path(repository, tag)
        read = await run("read tag", self._read_tagged, repository, path)
        if read is None:
            return None
        record, manifest_path, content = read
        if content is None:
            return record, None
        try:
            return record, await self._manifest_of(manifest_path, record.digest, content)
        except DockerConnectError:
            return record, None

    def _read_tagged(
        self, repository: str, path: str
    ) -> tuple[TagRecord, str, bytes | None] | None:
        content = read_or_none(path)
        if content is None:
            return None
        record = _tag_record(path, content)
        if not record.digest.verifiable:
            return record, "", None
        manifest_path = self._manifest_path(repository, record.digest)
        try:
            return record, manifest_path, read_or_none(manifest_path)
        except OSError:
            return record, manifest_path, None  # get_manifest reads it again, and says why

    async def set_tag(self, repository: str, tag: str, record: TagRecord) -> None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        if not isinstance(record, TagRecord):
            raise InvalidInput(f"expected a TagRecord, not {type(record).__name__}")
        doc = {
            "digest": str(record.digest),
            "media_type": record.media_type,
            "confirmed_at": record.confirmed_at,
            "source": record.source,
        }
        content = json.dumps(doc, sort_keys=True).encode()
        await run("write tag", self._root.write_file, self._tag_path(repository, tag), content)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        return await run("delete tag", self._root.remove, self._tag_path(repository, tag))

    async def tags(self, repository: str) -> list[str] | None:
        repository = validate_repository(repository)
        return await run("list tags", _list_tags, self._repository(repository))

    async def repositories(self) -> list[str]:
        top = self._root.join(REPOSITORIES_DIR)
        found = await run("list repositories", _list_repositories, top)
        return sorted(found)

    def __repr__(self) -> str:
        return f"FilesystemManifestStore({str(self.root)!r})"


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None


#: What a thread hop reading a blob file also reads when that much is all that
#: is left after a chunk: a blob of a chunk and a few bytes costs one hop.
TAIL: Final = CHUNK_SIZE // 4


def _read_chunks(file: io.FileIO, rest: int) -> list[bytes]:
    """One chunk of the ``rest`` bytes left in ``file``, and the others too if
    they are at most :data:`TAIL`; fewer bytes (or none) where the file ends early."""
    chunks = []
    want = min(CHUNK_SIZE, rest)
    if rest - want <= TAIL:
        want = rest
    while want > 0:
        chunk = file.read(min(CHUNK_SIZE, want))
        if not chunk:
            break
        chunks.append(chunk)
        want -= len(chunk)
    return chunks


def _open_at(path: str, offset: int) -> tuple[io.FileIO | None, list[bytes], int] | None:
    """``(file, first chunks from offset, size)``; ``file`` is ``None`` (closed)
    when the first chunks are all there is, or ``offset`` is past the end."""
    try:
        file = io.FileIO(path, "r")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        size = os.fstat(file.fileno()).st_size
        first: list[bytes] = []
        if offset < size:
            if offset:
                file.seek(offset)
            first = _read_chunks(file, size - offset)
        if offset + sum(len(c) for c in first) >= size:
            file.close()
            return None, first, size
    except BaseException:
        file.close()
        raise
    return file, first, size


def _tag_record(path: str, content: bytes) -> TagRecord:
    try:
        doc = json.loads(content)
        return TagRecord(
            digest=doc["digest"],
            media_type=doc["media_type"],
            confirmed_at=float(doc["confirmed_at"]),
            source=doc["source"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"corrupt tag record {path}: {exc}") from exc


def _subject_of(content: bytes) -> Digest | None:
    """The subject's digest of a stored manifest file, or ``None``."""
    media_type, _, data = content.partition(b"\n")
    try:
        manifest = Manifest.parse(data, media_type.decode("ascii"))
    except (ManifestInvalid, UnicodeDecodeError):
        # Not a manifest this store wrote: nothing of it was indexed.
        return None
    return manifest.subject.digest if manifest.subject is not None else None


def _referrer_digest(name: str) -> Digest | None:
    """The referrer digest an entry file is named after, or ``None``."""
    if not name.endswith(TAG_SUFFIX):
        return None
    algorithm, dash, hex_ = name[: -len(TAG_SUFFIX)].rpartition("-")
    try:
        return Digest.parse(f"{algorithm}:{hex_}") if dash else None
    except DigestInvalid:
        return None


def _list_tags(repository: str) -> list[str] | None:
    tags: list[str] = []
    try:
        names = os.listdir(os.path.join(repository, TAGS_DIR))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        if name.endswith(TAG_SUFFIX) and _valid_tag(name[: -len(TAG_SUFFIX)]):
            tags.append(name[: -len(TAG_SUFFIX)])
    if tags:
        return sorted(tags)
    return [] if _has_manifests(repository) else None


def _has_manifests(repository: str) -> bool:
    try:
        algorithms = os.scandir(os.path.join(repository, MANIFESTS_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return False
    with algorithms:
        for algorithm in algorithms:
            if algorithm.is_dir(follow_symlinks=False):
                with os.scandir(algorithm.path) as files:
                    if any(f.is_file(follow_symlinks=False) for f in files):
                        return True
    return False


def _has_tags(repository: str) -> bool:
    try:
        names = os.listdir(os.path.join(repository, TAGS_DIR))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return any(n.endswith(TAG_SUFFIX) and _valid_tag(n[: -len(TAG_SUFFIX)]) for n in names)


def _list_repositories(top: str) -> list[str]:
    found: list[str] = []
    pending: list[tuple[str, str]] = [(top, "")]
    while pending:
        directory, name = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        if name and (_has_tags(directory) or _has_manifests(directory)):
            found.append(name)
        for entry in entries:
            # Data directories start with "_", which no repository component can.
            if entry.name.startswith("_") or not entry.is_dir(follow_symlinks=False):
                continue
            child = f"{name}/{entry.name}" if name else entry.name
            if _valid_repository(child):
                pending.append((entry.path, child))
    return found


def _valid_tag(tag: str) -> bool:
    try:
        validate_tag(tag)
    except TagInvalid:
        return False
    return True


def _valid_repository(name: str) -> bool:
    try:
        validate_repository(name)
    except NameInvalid:
        return False
    return True
