"""The contracts: stores, connectors and the registry face an HTTP layer embeds.

Every protocol says what "absent" and "failed" look like. Absent is a value
(``None``, ``False``), and may be remembered as a miss; failed is an exception,
and is never remembered as a miss.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import attrs

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, as_digest
from dockerconnect._manifest import Manifest
from dockerconnect._stream import BlobStream

__all__ = [
    "BlobStore",
    "BlobWriter",
    "CachedBlob",
    "CachedManifest",
    "Connector",
    "IntegrityEntry",
    "IntegrityReport",
    "ManifestContentStore",
    "ManifestUsageLog",
    "ManifestStore",
    "ReferrersIndex",
    "ReferrersSource",
    "Registry",
    "TagRecord",
    "TagStore",
    "UsageLog",
]

#: The media type a blob store reports: stores keep bytes, not their meaning.
BLOB_MEDIA_TYPE = "application/octet-stream"


class BlobWriter(Protocol):
    """One blob being written; obtained from :meth:`BlobStore.ingest`.

    ``write`` appends bytes; ``commit`` verifies digest and size through
    :class:`~dockerconnect.DigestVerifier` and publishes atomically, raising
    :class:`~dockerconnect.errors.DigestMismatch` (or ``SizeInvalid``) and
    publishing nothing when they are wrong. A ``write`` that takes the
    total past the declared size raises ``SizeInvalid`` at once. After a
    failed write or commit, after a commit, and once its ``ingest`` block is
    left, the writer is unusable: ``write`` and ``commit`` raise
    :class:`~dockerconnect.errors.BlobUploadInvalid`. A ``commit`` cancelled
    while it publishes may have published (verified, complete) bytes.
    """

    @property
    def written(self) -> int:
        """Bytes written so far."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> Descriptor: ...


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed blob bytes.

    Absent: ``stat`` and ``open`` return ``None``; ``delete`` returns ``False``.
    Failed: any :class:`~dockerconnect.errors.DockerConnectError` (I/O
    errors are translated, e.g. to ``StorageError``). A digest that is not a
    :class:`~dockerconnect.Digest` or a valid digest string raises
    ``DigestInvalid`` before any I/O. Cancelling an ``ingest`` publishes
    nothing. :class:`dockerconnect.testing.BlobStoreConformance` is this
    contract as tests.
    """

    async def stat(self, digest: Digest) -> Descriptor | None:
        """The blob's descriptor (media type ``application/octet-stream``), or None."""
        ...

    async def open(self, digest: Digest, *, offset: int = 0) -> BlobStream | None:
        """Stream the blob from ``offset``; ``RangeInvalid`` past its end."""
        ...

    def ingest(
        self, digest: Digest, size: int | None = None
    ) -> AbstractAsyncContextManager[BlobWriter]:
        """Write a blob: ``async with store.ingest(d, n) as w: ...; await w.commit()``.

        ``size`` is the expected length, or ``None`` if unknown. Leaving the
        block without ``commit()`` (or with an exception, or by
        cancellation) discards what was written. Committing a digest already
        present succeeds and leaves one copy; so do concurrent ingests of one
        digest. A digest whose algorithm cannot be verified raises
        ``Unsupported``.
        """
        ...

    async def delete(self, digest: Digest) -> bool:
        """Remove the blob; ``False`` if it was not there."""
        ...


@attrs.frozen(slots=True)
class CachedBlob:
    """A blob held because it was fetched through a connector, and its use.

    ``source`` is the connector's name; ``cached_at`` and ``last_used`` are
    times on the clock of whoever called :meth:`UsageLog.mark` and
    :meth:`UsageLog.touch` (a resolver's injected clock).
    """

    digest: Digest = attrs.field(converter=as_digest)
    size: int
    source: str
    cached_at: float
    last_used: float


@runtime_checkable
class UsageLog(Protocol):
    """An optional capability of a :class:`BlobStore`: which blobs are a cache, and
    when each was last used, so that retention can remove them safely.

    The contract a retention policy relies on:

    - **Origin.** :meth:`mark` records where a blob came from: ``source=None``
      for content pushed to this registry (``push_blob``, or copied by
      ``pin_on_push``), a connector's name for content cached through it.
      Pushed is sticky: once a digest is marked pushed, marking it cached
      again changes nothing, and it is never listed or removed here. A blob
      that was never marked (say, a crash came between its commit and the
      mark) is kept too: only what is known to be a cache is removable. So
      mark pushed content *before* ingesting it, and cached content after its
      commit. Marks may name a digest the store does not hold (yet).
    - **Use.** :meth:`touch` records that a blob was served or fetched. It is
      synchronous and does no I/O, so a warm read never waits on a write;
      :meth:`flush` writes the pending uses in one batch. Call it
      periodically and before :meth:`cached` is used to decide across
      processes: a use is visible to other processes sharing the storage only
      once flushed (within one store instance it counts at once). Times never
      go backwards: a touch older than the recorded last use changes nothing.
      Marking a blob cached counts as a use at that time.
    - **Listing.** :meth:`cached` lists every held blob marked cached (not
      pushed), each once, with its size, source, and times.
    - **Removal.** :meth:`remove_cached` removes a blob only if it is held,
      marked cached, not used after ``unused_since``, and no ``ingest`` of it
      is in progress in this store instance; otherwise it returns ``False``
      and changes nothing. A commit of the same digest racing it (in any
      process sharing the storage) either finds the blob removed and
      publishes its own copy, or counts as a use and keeps it. A stream
      already open on the blob reads it to its end, whole.

    Absent: ``False`` from :meth:`remove_cached`, nothing listed. Failed: a
    ``DockerConnectError`` (``StorageError``). Invalid digests raise
    ``DigestInvalid`` before any I/O. :class:`dockerconnect.testing.BlobStoreConformance`
    tests this contract for stores that have it.
    """

    async def mark(self, digest: Digest, *, source: str | None, at: float) -> None:
        """Record ``digest`` as pushed (``source=None``) or cached through ``source``."""
        ...

    def touch(self, digest: Digest, at: float) -> None:
        """Note a use of ``digest`` at ``at``, without I/O; :meth:`flush` persists it."""
        ...

    async def flush(self) -> None:
        """Write the uses :meth:`touch` noted since the last flush."""
        ...

    async def cached(self) -> list[CachedBlob]:
        """Every held blob marked cached, least recently used first."""
        ...

    async def remove_cached(self, digest: Digest, *, unused_since: float) -> bool:
        """Remove ``digest`` if it is a cache unused since ``unused_since``; see above."""
        ...


@attrs.frozen(slots=True)
class TagRecord:
    """Where a tag points, and when and from where that was last confirmed.

    ``source`` is ``None`` for a tag pushed to this registry (authoritative),
    or the name of the connector it was cached from.
    """

    digest: Digest = attrs.field(converter=as_digest)
    media_type: str
    confirmed_at: float
    source: str | None = None

    @property
    def local(self) -> bool:
        """Whether the tag was pushed here rather than cached from a connector."""
        return self.source is None


class ManifestContentStore(Protocol):
    """Manifests by repository and digest, exact bytes kept.

    Absent: ``None`` / ``False``. Failed: a ``DockerConnectError``. Invalid
    repository names, tags and digests raise ``NameInvalid``, ``TagInvalid``
    and ``DigestInvalid`` before any I/O.
    """

    async def get_manifest(self, repository: str, digest: Digest) -> Manifest | None: ...

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        """Store ``manifest.data`` and its media type under its digest (idempotent)."""
        ...

    async def delete_manifest(self, repository: str, digest: Digest) -> bool: ...


class TagStore(Protocol):
    """Tags with a record of where they point. Absent: ``None`` / ``False``."""

    async def get_tag(self, repository: str, tag: str) -> TagRecord | None: ...

    async def set_tag(self, repository: str, tag: str, record: TagRecord) -> None: ...

    async def delete_tag(self, repository: str, tag: str) -> bool: ...

    async def tags(self, repository: str) -> list[str] | None:
        """The repository's tags in lexical order; ``None`` if the store holds
        nothing at all for the repository."""
        ...


@runtime_checkable
class ManifestStore(ManifestContentStore, TagStore, Protocol):
    """Manifests and tags; see :class:`ManifestContentStore` and :class:`TagStore`."""

    async def repositories(self) -> list[str]:
        """Every repository holding a manifest or a tag, in lexical order."""
        ...


@runtime_checkable
class ReferrersIndex(Protocol):
    """An optional capability of a :class:`ManifestStore`: who refers to a digest.

    A referrer is a manifest whose ``subject`` is the digest (OCI
    distribution-spec 1.1, "Listing Referrers"). The store keeps the index
    itself, inside ``put_manifest`` and ``delete_manifest``: a manifest with
    a ``subject`` is listed as soon as ``put_manifest`` returns, whether or
    not the subject is held anywhere ("Pushing Manifests with Subject"), and
    no longer once ``delete_manifest`` of it returns. Callers never maintain
    it by hand, so it cannot drift from the manifests.

    Absent: ``[]`` (no referrers, or an unknown subject; never ``None`` and
    never an error). Failed: a ``DockerConnectError``. Invalid names and
    digests raise ``NameInvalid`` / ``DigestInvalid`` before any I/O. A store
    without this capability still works; whoever needs referrers checks
    ``isinstance(store, ReferrersIndex)``.
    """

    async def referrers(self, repository: str, subject: Digest) -> list[Descriptor]:
        """The referrers of ``subject`` in ``repository``, ordered by digest.

        Each is :meth:`Manifest.referrer() <dockerconnect.Manifest.referrer>`
        of the stored manifest: media type, digest, size, ``artifact_type``
        (``artifactType``, else the config's media type) and annotations.
        Filtering by artifact type is the caller's.
        """
        ...


@attrs.frozen(slots=True)
class CachedManifest:
    """A manifest held because it was fetched through a connector, and its use."""

    repository: str
    digest: Digest = attrs.field(converter=as_digest)
    size: int
    source: str
    cached_at: float
    last_used: float


@runtime_checkable
class ManifestUsageLog(Protocol):
    """An optional capability of a :class:`ManifestStore`: :class:`UsageLog` for
    manifests, per repository.

    The same contract as :class:`UsageLog`, with a repository beside each
    digest: ``source=None`` marks a manifest pushed (sticky; mark it before
    ``put_manifest``), a connector's name marks it cached (after
    ``put_manifest``); unmarked and pushed manifests are never listed or
    removed; :meth:`touch_manifest` does no I/O and :meth:`flush` writes the
    pending uses in one batch. :meth:`remove_cached_manifest` removes the
    manifest (and its referrers entry, for a store that is a
    :class:`ReferrersIndex`) only if it is marked cached and not used after
    ``unused_since``. Tags are left alone, as by ``delete_manifest``: a
    cached tag pointing at a removed manifest is the caller's to remove or
    refetch.
    """

    async def mark_manifest(
        self, repository: str, digest: Digest, *, source: str | None, at: float
    ) -> None:
        """Record the manifest as pushed (``source=None``) or cached through ``source``."""
        ...

    def touch_manifest(self, repository: str, digest: Digest, at: float) -> None:
        """Note a use at ``at``, without I/O; :meth:`flush` persists it."""
        ...

    async def flush(self) -> None:
        """Write the uses noted since the last flush."""
        ...

    async def cached_manifests(self) -> list[CachedManifest]:
        """Every held manifest marked cached, least recently used first."""
        ...

    async def remove_cached_manifest(
        self, repository: str, digest: Digest, *, unused_since: float
    ) -> bool:
        """Remove the manifest if it is a cache unused since ``unused_since``."""
        ...


@runtime_checkable
class Connector(Protocol):
    """A named upstream that a :class:`~dockerconnect.Resolver` asks in order.

    Absent: ``None`` ("not there", may be remembered as a miss). Failed:
    :class:`~dockerconnect.errors.UpstreamError` or a subclass ("could not
    ask", never remembered). ``tags`` and ``repositories`` return ``None``
    when the upstream cannot list (no catalog), not an empty list.
    A ``BlobStream`` it returns raises ``UpstreamError`` from its iteration
    when the transfer breaks; the caller resumes with ``offset``.
    """

    name: str

    def serves(self, repository: str) -> bool:
        """Whether this connector is asked about ``repository`` at all."""
        ...

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None: ...

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None: ...

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None: ...

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None: ...

    async def tags(self, repository: str) -> list[str] | None: ...

    async def repositories(self) -> list[str] | None: ...


@runtime_checkable
class ReferrersSource(Protocol):
    """An optional capability of a :class:`Connector`: it lists referrers itself.

    A referrer of ``digest`` is a manifest whose ``subject`` is ``digest``
    (OCI distribution-spec 1.1, "Listing Referrers"); each descriptor carries
    the referrer's media type, digest, size, ``artifact_type`` and
    annotations (:meth:`Manifest.referrer() <dockerconnect.Manifest.referrer>`).
    With ``artifact_type``, only referrers of that type are returned.

    Absent: ``[]`` (no referrers, known subject or not). ``None``: the
    upstream has no referrers API, so the caller asks for the tag schema
    instead (the index tagged ``<algorithm>-<hex>``, through
    :meth:`Connector.get_manifest`). Failed: ``UpstreamError``, never
    remembered as "no referrers". A connector without this method is asked
    through the tag schema only.
    """

    async def referrers(
        self, repository: str, digest: Digest, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None: ...


@attrs.frozen(slots=True)
class IntegrityEntry:
    """Where one referenced descriptor resolves.

    ``location`` is the registry's own name, a connector's name, or ``None``
    when it resolves nowhere.
    """

    descriptor: Descriptor
    location: str | None


@attrs.frozen(slots=True)
class IntegrityReport:
    """What a manifest references and where each piece resolves.

    Lists what the manifest references, not the manifest itself; for an
    index, each child and, recursively, everything each child references.
    """

    repository: str
    manifest: Descriptor
    entries: tuple[IntegrityEntry, ...]

    @property
    def missing(self) -> tuple[Descriptor, ...]:
        """The descriptors that resolve nowhere."""
        return tuple(e.descriptor for e in self.entries if e.location is None)

    @property
    def ok(self) -> bool:
        """Whether every reference resolves somewhere."""
        return all(e.location is not None for e in self.entries)

    def by_location(self) -> dict[str | None, list[Descriptor]]:
        """The descriptors grouped by where they resolve."""
        out: dict[str | None, list[Descriptor]] = {}
        for entry in self.entries:
            out.setdefault(entry.location, []).append(entry.descriptor)
        return out


@runtime_checkable
class Registry(Protocol):
    """The read/write face of a registry, as an HTTP layer embeds it.

    Absent: ``ManifestUnknown`` / ``BlobUnknown`` / ``NameUnknown`` (all
    :class:`~dockerconnect.errors.NotFound`). Failed: ``UpstreamError`` naming
    the connectors that could not be asked. Invalid input: an
    :class:`~dockerconnect.errors.InvalidInput` before any I/O.
    ``reference`` is a tag or a digest string.
    """

    name: str

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest: ...

    async def head_manifest(self, repository: str, reference: str) -> Descriptor: ...

    async def stat_blob(self, repository: str, digest: Digest | str) -> Descriptor: ...

    async def open_blob(
        self, repository: str, digest: Digest | str, *, offset: int = 0
    ) -> BlobStream: ...

    async def push_blob(
        self, repository: str, data: bytes | AsyncIterable[bytes], *, digest: Digest | str
    ) -> Descriptor: ...

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor: ...

    async def delete_manifest(self, repository: str, reference: str) -> None: ...

    async def tags(
        self, repository: str, *, n: int | None = None, last: str | None = None
    ) -> list[str]: ...

    async def repositories(self, *, n: int | None = None, last: str | None = None) -> list[str]: ...

    async def check(self, repository: str, reference: str) -> IntegrityReport: ...

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """The referrers of ``digest`` (of ``artifact_type``, if given).

        ``[]`` when there are none, whether or not the subject exists: never
        ``NotFound``. Failed: ``UpstreamError`` when nothing was found and a
        connector could not be asked.
        """
        ...
