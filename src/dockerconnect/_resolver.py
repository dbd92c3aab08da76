"""The Resolver: a registry of its own plus connectors asked in priority order.

Resolution rules (DESIGN.md "Resolution rules"): local first, then each
connector that serves the repository, in order; first hit wins. Content by
digest is verified before it is served as complete or cached; tags cached
from a connector are served while fresh and revalidated with a HEAD when
stale. One fetch in flight per blob (and per manifest request) is shared by
every reader, and is driven by the resolver's own task group so that no
reader's pause or departure delays the others or the caching.

This class is the ``Registry`` face: it validates every call before any
I/O and delegates to the rooms in :mod:`dockerconnect._resolve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType

import anyio

from dockerconnect._chain import entered
from dockerconnect._descriptor import Descriptor, Platform
from dockerconnect._digest import Digest
from dockerconnect._events import Observer
from dockerconnect._manifest import Manifest
from dockerconnect._policy import CachingPolicy
from dockerconnect._protocols import (
    BlobStore,
    Connector,
    IntegrityReport,
    ManifestStore,
)
from dockerconnect._reference import parse_reference, validate_repository
from dockerconnect._resolve.blobs import BlobFetch
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.health import ConnectorHealth, HealthPolicy
from dockerconnect._resolve.listing import Listing, check_paging
from dockerconnect._resolve.manifests import Manifests, Resolved
from dockerconnect._resolve.referrers import Referrers
from dockerconnect._resolve.retention import PruneReport, Retention, RetentionPolicy, UsageMarks
from dockerconnect._resolve.shared import FetchCoordinator, gate_for
from dockerconnect._resolve.sources import SharedMisses, Sources
from dockerconnect._resolve.tasks import Tasks
from dockerconnect._resolve.walk import Walks
from dockerconnect._resolve.writes import Writes
from dockerconnect._stats import ResolverStats
from dockerconnect._stream import BlobStream
from dockerconnect.errors import (
    BlobUnknown,
    DigestMismatch,
    DockerConnectError,
    InvalidInput,
    ManifestInvalid,
)

__all__ = ["Resolver"]

log = logging.getLogger("dockerconnect.resolver")

#: Seconds a connector may stay silent (no answer, no next chunk) before the
#: request is abandoned as failed and the next source is asked.
STALL_TIMEOUT = 60.0


def _count_of(what: str, value: object) -> None:
    """``InvalidInput`` unless ``value`` is a non-negative ``int`` (not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, not {value!r}")


def _is_media_type(value: object) -> bool:
    return isinstance(value, str) and bool(value) and value.isprintable()


def _check_options(
    name: object, stall_timeout: object, health: object, coordinator: object
) -> None:
    """``InvalidInput`` for a constructor argument of the wrong kind, before anything starts."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a resolver needs a non-empty name")
    if isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float)):
        raise InvalidInput("stall_timeout must be a number of seconds")
    if stall_timeout <= 0:
        raise InvalidInput("stall_timeout must be a positive number of seconds")
    if health is not None and not isinstance(health, HealthPolicy):
        raise InvalidInput("health must be a HealthPolicy or None")
    if coordinator is not None and not isinstance(coordinator, FetchCoordinator):
        raise InvalidInput(
            "coordinator must have acquire, keep, release and wait "
            "(a dockerconnect.redis.RedisFetchCoordinator), or be None"
        )


def _shared_misses(coordinator: object) -> SharedMisses | None:
    """The coordinator, when it also shares misses between replicas."""
    return coordinator if isinstance(coordinator, SharedMisses) else None


def _start_eager(tasks: Tasks, walks: Walks, repository: str, resolved: Resolved) -> None:
    """Eager caching of what ``resolved`` references, once, if it was just fetched."""
    policy = resolved.policy
    if resolved.fetched and policy is not None and policy.eager and not resolved.eager_started:
        resolved.eager_started = True
        tasks.spawn(walks.eager, repository, resolved.manifest, policy)


def _digest(value: Digest | str) -> Digest:
    digest = Digest.parse(value)
    digest.hasher()  # Unsupported now, before any I/O, if it cannot be verified
    return digest


class Resolver:
    """A registry with its own stores and an ordered list of connectors.

    Use it inside ``async with Resolver(...) as r:``; it owns its background
    work (shared fetches, eager caching) and stops it on exit. ``connectors``
    is a list the embedder may change at run time; the next request sees the
    change. ``overrides`` maps a connector's name to its own policy.
    ``clock`` returns seconds (``time.time`` by default) and drives every TTL.
    ``spool_dir`` is where shared fetches keep their anonymous spool files
    (the system temporary directory by default). ``stall_timeout`` is how
    long a connector may stay silent (no answer, no next chunk of a blob)
    before it counts as failed and the next one is asked.
    ``default_platform`` is the platform chosen from an index for a client
    that cannot take an index (see :meth:`get_manifest`). ``health`` says
    when a failing connector is skipped without being asked (``None``: never).
    ``retention`` bounds the cached content (see :meth:`prune`); it needs a
    blob store that is a :class:`~dockerconnect.UsageLog` (``Unsupported``
    otherwise). ``observers`` are told of each :class:`~dockerconnect.Event`
    (``r.observers`` is a list the embedder may change at run time).
    Processes over one :class:`~dockerconnect.FilesystemBlobStore` root fetch
    each blob from upstream once between them by themselves; replicas over
    another shared store (S3) do so through a ``coordinator`` such as
    :class:`dockerconnect.redis.RedisFetchCoordinator` (see "Running several
    replicas" in the guides). A coordinator that also remembers misses
    (``is_miss``, ``remember_miss``, as that one does) shares each
    connector's "not there" between the replicas for its ``negative_ttl``.
    """

    def __init__(
        self,
        name: str,
        *,
        manifests: ManifestStore,
        blobs: BlobStore,
        connectors: Sequence[Connector] = (),
        policy: CachingPolicy = CachingPolicy(),  # noqa: B008 - frozen, safe to share
        overrides: Mapping[str, CachingPolicy] = {},
        clock: Callable[[], float] = time.time,
        spool_dir: str | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        default_platform: str = "linux/amd64",
        health: HealthPolicy | None = HealthPolicy(),  # noqa: B008 - frozen, safe to share
        retention: RetentionPolicy | None = None,
        observers: Sequence[Observer] = (),
        coordinator: FetchCoordinator | None = None,
    ) -> None:
        _check_options(name, stall_timeout, health, coordinator)
        self.coordinator = coordinator
        self.name = name
        self.manifests = manifests
        self.blobs = blobs
        self.connectors: list[Connector] = list(connectors)
        self.policy = policy
        self.overrides: dict[str, CachingPolicy] = dict(overrides)
        self.clock = clock
        self.stats = ResolverStats(observers=list(observers), clock=self._now)
        self.default_platform = Platform.parse(default_platform)
        self._build(spool_dir, float(stall_timeout), health, retention)

    def _build(
        self,
        spool_dir: str | None,
        stall_timeout: float,
        health: HealthPolicy | None,
        retention: RetentionPolicy | None,
    ) -> None:
        """The rooms this face delegates to, sharing the stats, clock and policy."""
        name, manifests, blobs = self.name, self.manifests, self.blobs
        self._tasks = Tasks(name)
        self._sources = Sources(
            name,
            connectors=lambda: self.connectors,
            policy_for=self.policy_for,
            clock=self._now,
            stats=self.stats,
            stall_timeout=stall_timeout,
            health=health,
            shared_misses=_shared_misses(self.coordinator),
        )
        self._usage = UsageMarks(blobs, manifests, clock=self._now)
        self._retention = Retention(
            retention, self._usage, blobs=blobs, manifests=manifests, clock=self._now,
            stats=self.stats,
        )  # fmt: skip
        context = Context(
            name, self._sources, self._tasks, self.stats, self._now, self.policy_for, self._usage
        )
        self._manifests = Manifests(context, store=manifests)
        gate = gate_for(blobs, self.coordinator)
        self._blobs = BlobFetch(context, store=blobs, spool_dir=spool_dir, gate=gate)
        self._retention.in_flight = self._blobs.in_flight
        self._listing = Listing(context, store=manifests, connectors=lambda: self.connectors)
        self._referrers = Referrers(context, store=manifests)
        self._walks = Walks(
            self, manifests=self._manifests, blobs=self._blobs, referrers=self._referrers
        )
        self._writes = Writes(
            manifests, blobs, walks=self._walks, usage=self._usage, clock=self._now,
            pin_on_push=lambda: self.policy.pin_on_push, settled=self._tasks.settled,
        )  # fmt: skip

    def _now(self) -> float:
        return self.clock()

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Resolver:
        await self._tasks.open()
        self._walks.reset()
        self._retention.reset()
        if self._usage.blobs is not None or self._usage.manifests is not None:
            # Not counted as work: wait_idle() does not wait for this loop.
            self._tasks.require().start_soon(self._retention.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._tasks.close()
        finally:
            self._blobs.close()
        try:
            with anyio.CancelScope(shield=True):
                await self._usage.flush()  # the uses noted since the last flush
        except DockerConnectError as exc:
            log.warning("could not record the last uses of cached content: %s", exc)

    async def wait_idle(self) -> None:
        """Wait until no background work (shared fetches, eager caching) is running."""
        await self._tasks.wait_idle()

    @property
    def health(self) -> Mapping[str, ConnectorHealth]:
        """Each current connector's health, by name (see :class:`HealthPolicy`)."""
        tracker = self._sources.health
        return MappingProxyType({c.name: tracker.view(c.name) for c in self.connectors})

    @property
    def observers(self) -> list[Observer]:
        """Told of each :class:`~dockerconnect.Event`; add or remove at run time."""
        return self.stats.observers

    @property
    def retention(self) -> RetentionPolicy | None:
        """The retention policy (``None``: content is kept until :meth:`prune` is called)."""
        return self._retention.policy

    async def prune(self) -> PruneReport:
        """Remove cached content by the retention policy, now; what was removed and kept.

        Only content fetched through a connector is removed, never what was
        pushed (or pinned by ``pin_on_push``): idle content first (unused for
        ``max_idle`` seconds on the resolver's clock), then least recently
        used until the cached bytes are at most ``max_bytes``. A blob being
        read is read to its end; removed content is fetched again when next
        asked for. Without a policy nothing is removed and the report counts
        what is cached. ``Unsupported`` when the blob store does not record
        use (it is not a :class:`~dockerconnect.UsageLog`). Safe to run in
        several processes sharing one filesystem store at once.
        """
        await self._tasks.settled()  # open, and cached manifests committed
        return await self._retention.prune()

    def policy_for(self, connector: str | None) -> CachingPolicy:
        """The policy for content from ``connector`` (its override, or the default)."""
        if connector is None:
            return self.policy
        return self.overrides.get(connector, self.policy)

    # -- manifests ----------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest:
        """The manifest for a tag or digest; ``ManifestUnknown`` when no source has it.

        Connectors are always asked with every manifest type, and what a tag
        names is cached as it is. ``accept`` (the client's ``Accept``) only
        chooses what this client is served: for a tag naming an index, a
        client that accepts image manifests but no index type gets the
        child for ``default_platform`` (``linux/amd64`` unless set). By
        digest, the manifest is served as it is.
        """
        validate_repository(repository)
        ref = parse_reference(reference)
        self._tasks.require()
        with entered(self):
            resolved = await self._manifests.resolve(repository, ref)
            _start_eager(self._tasks, self._walks, repository, resolved)
            if isinstance(ref, str):
                chosen = await self._manifests.for_client(
                    repository, resolved, accept, self.default_platform
                )
                _start_eager(self._tasks, self._walks, repository, chosen)
                return chosen.manifest
            return resolved.manifest

    async def head_manifest(self, repository: str, reference: str) -> Descriptor:
        """The manifest's descriptor (media type, digest, size).

        When the policy caches manifests a cold HEAD fetches and caches the
        manifest, so the client's next GET is a local hit. Per-connector
        overrides apply: a connector whose policy does not cache manifests
        is asked with a HEAD only.
        """
        validate_repository(repository)
        ref = parse_reference(reference)
        self._tasks.require()
        with entered(self):
            serving = self._sources.serving(repository)
            every_one_caches = all(self.policy_for(c.name).cache_manifests for c in serving)
            if every_one_caches or await self._manifests.known_here(repository, ref):
                resolved = await self._manifests.resolve(repository, ref)
                _start_eager(self._tasks, self._walks, repository, resolved)
                return resolved.manifest.descriptor()
            return await self._manifests.head_through(repository, ref)

    # -- blobs --------------------------------------------------------------

    async def stat_blob(self, repository: str, digest: Digest | str) -> Descriptor:
        """The blob's descriptor; asks connectors (HEAD) when it is not held here."""
        validate_repository(repository)
        d = _digest(digest)
        self._tasks.require()
        with entered(self):
            return await self._blobs.stat(repository, d)

    async def open_blob(
        self,
        repository: str,
        digest: Digest | str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> BlobStream:
        """Stream a blob from ``offset``: from the store, or through one shared fetch.

        ``BlobStream.source`` names where the bytes come from. Under a caching
        policy the blob is verified and committed here before its last byte
        reaches any reader. A read that may stop before the end (``offset``
        above 0, or a ``length``: an HTTP range) of a blob not held here
        gets its first byte only once the shared fetch has verified the whole
        blob: a range is never served unverified. ``length`` only says how
        much the caller means to read; the stream still runs to the end.
        """
        validate_repository(repository)
        d = _digest(digest)
        _count_of("offset", offset)
        if length is not None:
            _count_of("length", length)
        self._tasks.require()
        with entered(self):
            partial = offset > 0 or length is not None
            return await self._blobs.open(repository, d, offset, partial=partial)

    async def delete_blob(self, repository: str, digest: Digest | str) -> None:
        """Remove the blob this registry holds (not part of the ``Registry`` protocol).

        Connectors are read-only: only the local copy goes. ``BlobUnknown``
        when this registry holds none.
        """
        validate_repository(repository)
        d = Digest.parse(digest)
        self._tasks.require()
        if not await self.blobs.delete(d):
            raise BlobUnknown(f"blob {d} is not held here", repository=repository, digest=d)

    # -- writes -------------------------------------------------------------

    async def push_blob(
        self, repository: str, data: bytes | AsyncIterable[bytes], *, digest: Digest | str
    ) -> Descriptor:
        """Store a blob, verified against ``digest``; ``DigestMismatch`` stores nothing.

        ``data`` is bytes or an async iterable of bytes; anything else is
        ``InvalidInput``.
        """
        validate_repository(repository)
        d = _digest(digest)
        whole = isinstance(data, (bytes, bytearray, memoryview))
        if not whole and not hasattr(data, "__aiter__"):
            raise InvalidInput(
                f"blob data must be bytes or an async iterable of bytes, not {type(data).__name__}"
            )
        self._tasks.require()
        return await self._writes.blob(d, data)

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor:
        """Store a manifest (and tag it), once everything it references resolves.

        Content that resolves only through a connector is accepted (as ProGet
        does); with ``pin_on_push`` it is copied here first. Otherwise
        ``ManifestBlobUnknown`` lists what resolves nowhere, and a reference
        whose declared size is not its content's real size is
        ``ManifestInvalid`` (no client could pull it). A manifest's
        ``subject`` need not exist (OCI distribution-spec, "Pushing Manifests
        with Subject"). ``tag`` may also be a digest (a push by digest):
        the bytes must hash to it (``DigestMismatch`` otherwise), and no tag
        is set.
        """
        validate_repository(repository)
        ref = parse_reference(tag) if tag is not None else None
        if not isinstance(media_type, str) or not media_type:
            raise ManifestInvalid("push_manifest needs the manifest's media type")
        manifest = Manifest.parse(data, media_type)
        if isinstance(ref, Digest) and not ref.matches(manifest.data):
            raise DigestMismatch(
                f"manifest bytes do not match {ref}", repository=repository, digest=ref
            )
        self._tasks.require()
        with entered(self):
            return await self._writes.manifest(repository, manifest, ref)

    async def delete_manifest(self, repository: str, reference: str) -> None:
        """Delete a tag, or a manifest by digest together with the tags naming it.

        Only what this registry holds is deleted; connectors are read-only.
        """
        validate_repository(repository)
        ref = parse_reference(reference)
        self._tasks.require()
        await self._writes.delete_manifest(repository, ref)

    # -- listing ------------------------------------------------------------

    async def tags(
        self, repository: str, *, n: int | None = None, last: str | None = None
    ) -> list[str]:
        """Tags from here and every connector that can list, merged, sorted, paged.

        ``last`` is exclusive, ``n`` caps the count (distribution-spec
        "Listing Tags"). ``NameUnknown`` when no source knows the repository;
        ``UpstreamError`` when none does and some connector could not be asked.
        """
        validate_repository(repository)
        check_paging(n, last)
        await self._tasks.settled()  # open, and cached manifests committed
        with entered(self):
            return await self._listing.tags(repository, n, last)

    async def repositories(self, *, n: int | None = None, last: str | None = None) -> list[str]:
        """Repositories from here and every connector with a catalog, merged, sorted, paged.

        ``UpstreamError`` when nothing is listed and a connector could not be asked.
        """
        check_paging(n, last)
        await self._tasks.settled()  # open, and cached manifests committed
        with entered(self):
            return await self._listing.repositories(n, last)

    # -- integrity and referrers ---------------------------------------------

    async def check(
        self, repository: str, reference: str, *, referrers: bool = False
    ) -> IntegrityReport:
        """Where every reference of a manifest resolves: here, a connector, or nowhere.

        A tag is resolved as :meth:`get_manifest` would; beyond that this only
        inspects: nothing it looks up through connectors is cached, and no
        eager caching starts. The walk is iterative: any depth of index is fine.
        With ``referrers``, the report also lists each referrer (signature,
        SBOM, attestation) of the manifest and of an index's children, and
        what each references, so a mirror's operator sees whether they are
        held here or only upstream.
        """
        validate_repository(repository)
        ref = parse_reference(reference)
        if not isinstance(referrers, bool):
            raise InvalidInput(f"referrers must be True or False, not {referrers!r}")
        self._tasks.require()
        with entered(self):
            manifest = (await self._manifests.resolve(repository, ref)).manifest
            return await self._walks.report(repository, manifest, referrers=referrers)

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """The manifests whose ``subject`` is ``digest`` (OCI 1.1 "Listing Referrers").

        Local referrers (pushed or cached here) first, then each serving
        connector's in order, de-duplicated by digest; with ``artifact_type``
        only referrers of that type. ``[]`` when there are none, whether or
        not the subject exists. A connector's answer is reused for
        ``referrers_ttl`` seconds and served stale on upstream errors for
        ``stale_if_error``; ``UpstreamError`` only when nothing was found and
        a connector could not be asked.
        """
        validate_repository(repository)
        d = Digest.parse(digest)
        if artifact_type is not None and not _is_media_type(artifact_type):
            raise InvalidInput(f"artifact_type must be a media type, not {artifact_type!r}")
        await self._tasks.settled()  # open, and cached manifests committed
        with entered(self):
            return await self._referrers.lookup(repository, d, artifact_type)
