"""The Resolver: a registry of its own plus connectors asked in priority order.

Resolution rules (DESIGN.md "Resolution rules"): local first, then each
connector that serves the repository, in order; first hit wins. Content by
digest is verified before it is served as complete or cached; tags cached
from a connector are served while fresh and revalidated with a HEAD when
stale. One fetch in flight per blob (and per manifest request) is shared by
every reader, and is driven by the resolver's own task group so that no
reader's pause or departure delays the others or the caching.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, aclosing
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import cachetools

from dockerconnect._chain import Work, entered, set_current_work, waiting_for, would_deadlock
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._flight import BlobFlight, coalesce, copy_error
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, Manifest
from dockerconnect._policy import CachingPolicy, StaleDecision, TagDecision
from dockerconnect._protocols import (
    BlobStore,
    Connector,
    IntegrityEntry,
    IntegrityReport,
    ManifestStore,
    TagRecord,
)
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._stats import ResolverStats
from dockerconnect._stream import BlobStream
from dockerconnect._together import together
from dockerconnect.errors import (
    BlobUnknown,
    ConnectorCycle,
    DigestMismatch,
    DockerConnectError,
    InvalidInput,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    PaginationInvalid,
    ResolverClosed,
    UpstreamDigestMismatch,
    UpstreamError,
)

__all__ = ["Resolver"]

log = logging.getLogger("dockerconnect.resolver")

T = TypeVar("T")

#: How many times a broken upstream transfer is resumed before giving up.
MAX_RESUMES = 5
#: Chunks received ahead of the one being stored (each up to about 1 MiB).
READ_AHEAD = 4
#: Blobs fetched at once by eager caching, per resolver.
EAGER_CONCURRENCY = 4
#: Remembered misses, per resolver (least recently used are forgotten first).
NEGATIVE_CACHE_SIZE = 16384

_NON_DISTRIBUTABLE = ("nondistributable", "foreign")


def _is_foreign(descriptor: Descriptor) -> bool:
    # Non-distributable ("foreign") layers live at their urls, not in registries
    # (image-spec layer.md "Non-Distributable Layers"); no registry is asked for them.
    return any(marker in descriptor.media_type for marker in _NON_DISTRIBUTABLE)


def _is_manifest(descriptor: Descriptor) -> bool:
    return descriptor.media_type in MANIFEST_MEDIA_TYPES


def _parse_reference(reference: str) -> Digest | str:
    """A digest (when it looks like one) or a validated tag."""
    if not isinstance(reference, str):
        raise InvalidInput(f"reference must be a string, not {type(reference).__name__}")
    if ":" in reference:
        digest = Digest.parse(reference)
        digest.hasher()  # Unsupported now, before any I/O, if it cannot be verified
        return digest
    return validate_tag(reference)


class _SharedCall(Work, Generic[T]):
    def __init__(self) -> None:
        self.waiting_on = None
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class Resolver:
    """A registry with its own stores and an ordered list of connectors.

    Use it inside ``async with Resolver(...) as r:``; it owns its background
    work (shared fetches, eager caching) and stops it on exit. ``connectors``
    is a list the embedder may change at run time; the next request sees the
    change. ``overrides`` maps a connector's name to its own policy.
    ``clock`` returns seconds (``time.time`` by default) and drives every TTL.
    ``spool_dir`` is where shared fetches keep their anonymous spool files
    (the system temporary directory by default).
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
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidInput("a resolver needs a non-empty name")
        self.name = name
        self.manifests = manifests
        self.blobs = blobs
        self.connectors: list[Connector] = list(connectors)
        self.policy = policy
        self.overrides: dict[str, CachingPolicy] = dict(overrides)
        self.clock = clock
        self.stats = ResolverStats()
        self._spool_dir = spool_dir
        self._tg: anyio.abc.TaskGroup | None = None
        self._exit: AsyncExitStack | None = None
        self._flights: dict[Digest, BlobFlight] = {}
        self._calls: dict[tuple[Any, ...], _SharedCall[Any]] = {}
        self._negative: cachetools.LRUCache[tuple[str, str, str, str], float] = cachetools.LRUCache(
            NEGATIVE_CACHE_SIZE
        )
        self._suspect: cachetools.LRUCache[tuple[str, Digest], float] = cachetools.LRUCache(1024)
        self._eager_limit = anyio.CapacityLimiter(EAGER_CONCURRENCY)
        self._background = 0
        self._idle = anyio.Event()
        self._idle.set()

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Resolver:
        if self._tg is not None:
            raise ResolverClosed(f"resolver {self.name!r} is already open")
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._exit = stack
        self._eager_limit = anyio.CapacityLimiter(EAGER_CONCURRENCY)
        self._idle = anyio.Event()
        self._idle.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        assert self._exit is not None
        self._tg.cancel_scope.cancel()
        stack, self._exit = self._exit, None
        try:
            await stack.aclose()
        finally:
            self._tg = None
            for flight in list(self._flights.values()):
                flight.finish(ResolverClosed(f"resolver {self.name!r} closed"))
            self._flights.clear()
            self._calls.clear()

    async def wait_idle(self) -> None:
        """Wait until no background work (shared fetches, eager caching) is running."""
        self._open()
        while self._background:
            await self._idle.wait()

    def _open(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ResolverClosed(
                f"resolver {self.name!r} is not open: use it inside 'async with Resolver(...)'"
            )
        return self._tg

    def _spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, work: Work | None = None
    ) -> None:
        tg = self._open()
        self._background += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

        async def run() -> None:
            set_current_work(work)
            try:
                await fn(*args)
            finally:
                self._background -= 1
                if not self._background:
                    self._idle.set()

        tg.start_soon(run)

    async def _shared(self, key: tuple[Any, ...], fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` once for every concurrent caller with the same ``key``."""
        call = self._calls.get(key)
        if call is not None and would_deadlock(call):
            raise ConnectorCycle(
                f"request would wait on itself through {self.name!r}", connector=self.name
            )
        if call is None:
            call = _SharedCall()
            self._calls[key] = call
            self._spawn(self._run_shared, key, call, fn, work=call)
        with waiting_for(call):
            await call.done.wait()
        if call.error is not None:
            raise copy_error(call.error)
        return call.result  # type: ignore[return-value]

    async def _run_shared(
        self, key: tuple[Any, ...], call: _SharedCall[Any], fn: Callable[[], Awaitable[Any]]
    ) -> None:
        try:
            call.result = await fn()
        except Exception as exc:  # handed to every waiter
            call.error = exc
        except BaseException:
            call.error = ResolverClosed(f"resolver {self.name!r} closed")
            raise
        finally:
            self._calls.pop(key, None)
            call.done.set()

    # -- helpers ------------------------------------------------------------

    def policy_for(self, connector: str | None) -> CachingPolicy:
        """The policy for content from ``connector`` (its override, or the default)."""
        if connector is None:
            return self.policy
        return self.overrides.get(connector, self.policy)

    def _serving(self, repository: str) -> list[Connector]:
        out = []
        for connector in list(self.connectors):
            try:
                if connector.serves(repository):
                    out.append(connector)
            except Exception:  # a faulty plugin must not break resolution
                log.exception("connector %r failed in serves()", getattr(connector, "name", "?"))
        return out

    def _negative_hit(self, connector: Connector, kind: str, repository: str, ref: str) -> bool:
        key = (connector.name, kind, repository, ref)
        expiry = self._negative.get(key)
        if expiry is None:
            return False
        if self.clock() < expiry:
            self.stats.negative_hits += 1
            return True
        self._negative.pop(key, None)
        return False

    def _remember_miss(self, connector: Connector, kind: str, repository: str, ref: str) -> None:
        self.stats.misses[connector.name] += 1
        expiry = self.policy_for(connector.name).negative_expiry(self.clock())
        if expiry is not None:
            self._negative[(connector.name, kind, repository, ref)] = expiry

    def _failed(self, connector: Connector, exc: BaseException, what: str) -> BaseException:
        """Record a connector failure; return it as an ``UpstreamError``-compatible value."""
        if isinstance(exc, ConnectorCycle):
            self.stats.cycles_refused += 1
            log.info("connector %r refused a loop while resolving %s", connector.name, what)
            return exc
        self.stats.upstream_errors[connector.name] += 1
        if isinstance(exc, DigestMismatch):
            self.stats.verification_failures += 1
            log.warning("connector %r sent content that does not match %s", connector.name, what)
        elif isinstance(exc, DockerConnectError):
            log.warning("connector %r could not be asked for %s: %s", connector.name, what, exc)
        else:
            log.error(
                "connector %r raised an unexpected error for %s",
                connector.name,
                what,
                exc_info=exc,
            )
        return exc

    def _give_up(
        self,
        not_found: type[NotFound],
        what: str,
        failures: dict[str, BaseException],
        **context: Any,
    ) -> DockerConnectError:
        real = {k: v for k, v in failures.items() if not isinstance(v, ConnectorCycle)}
        if not real:
            return not_found(f"{what} is not known to {self.name!r} or its connectors", **context)
        if len(real) == 1:
            ((_name, only),) = real.items()
            if isinstance(only, UpstreamError) and not isinstance(only, ConnectorCycle):
                return only
        names = ", ".join(sorted(real))
        detail = {name: f"{type(e).__name__}: {e}" for name, e in real.items()}
        return UpstreamError(
            f"{what}: no source has it, and these connectors could not be asked: {names}",
            failures=real,
            connector=names,
            detail=detail,
            **context,
        )

    def _count(self, connector: Connector, kind: str) -> None:
        self.stats.upstream_requests[(connector.name, kind)] += 1

    def _served(self, n: int) -> None:
        self.stats.bytes_served += n

    # -- manifests ----------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest:
        """The manifest for a tag or digest; ``ManifestUnknown`` when no source has it."""
        validate_repository(repository)
        ref = _parse_reference(reference)
        self._open()
        with entered(self):
            manifest, _ = await self._resolve_manifest(repository, ref, accept, eager=True)
            return manifest

    async def head_manifest(self, repository: str, reference: str) -> Descriptor:
        """The manifest's descriptor (media type, digest, size).

        When the default policy caches manifests a cold HEAD fetches and
        caches the manifest, so the client's next GET is a local hit.
        """
        validate_repository(repository)
        ref = _parse_reference(reference)
        self._open()
        with entered(self):
            if self.policy.cache_manifests or await self._local_manifest_known(repository, ref):
                manifest, _ = await self._resolve_manifest(repository, ref, None, eager=True)
                return manifest.descriptor()
            return await self._head_through(repository, ref)

    async def _local_manifest_known(self, repository: str, ref: Digest | str) -> bool:
        if isinstance(ref, Digest):
            return await self.manifests.get_manifest(repository, ref) is not None
        return await self.manifests.get_tag(repository, ref) is not None

    async def _head_through(self, repository: str, ref: Digest | str) -> Descriptor:
        failures: dict[str, BaseException] = {}
        key = str(ref)
        for connector in self._serving(repository):
            if self._negative_hit(connector, "manifest", repository, key):
                continue
            self._count(connector, "head_manifest")
            try:
                found = await connector.head_manifest(repository, key)
            except Exception as exc:
                failures[connector.name] = self._failed(connector, exc, f"{repository}:{key}")
                continue
            if found is None:
                self._remember_miss(connector, "manifest", repository, key)
                continue
            if isinstance(ref, Digest) and found.digest != ref:
                failures[connector.name] = self._failed(
                    connector,
                    DigestMismatch(f"HEAD answered {found.digest} for {ref}", digest=ref),
                    key,
                )
                continue
            self.stats.hits[connector.name] += 1
            return found
        raise self._give_up(
            ManifestUnknown, f"manifest {repository}:{key}", failures, repository=repository
        )

    async def _resolve_manifest(
        self, repository: str, ref: Digest | str, accept: Sequence[str] | None, *, eager: bool
    ) -> tuple[Manifest, str]:
        """The manifest and where it came from (own name or a connector's)."""
        if isinstance(ref, Digest):
            local = await self.manifests.get_manifest(repository, ref)
            if local is not None:
                self.stats.hits[self.name] += 1
                return local, self.name
            return await self._shared(
                ("manifest", repository, str(ref), eager),
                lambda: self._fetch_manifest(repository, ref, accept, eager=eager),
            )
        record = await self.manifests.get_tag(repository, ref)
        if record is not None:
            policy = self.policy_for(record.source)
            decision = policy.tag_decision(record, self.clock())
            if decision is TagDecision.FRESH:
                local = await self.manifests.get_manifest(repository, record.digest)
                if local is not None:
                    self.stats.hits[self.name] += 1
                    return local, self.name
                if record.local:
                    raise ManifestUnknown(
                        f"tag {repository}:{ref} points at a manifest this registry lost",
                        repository=repository,
                        digest=record.digest,
                    )
            elif decision is TagDecision.REVALIDATE:
                return await self._shared(
                    ("tag", repository, ref, eager),
                    lambda: self._revalidate(repository, ref, record, accept, eager=eager),
                )
            else:  # pragma: no cover - exhaustive
                raise AssertionError(decision)
        return await self._shared(
            ("tag", repository, ref, eager),
            lambda: self._fetch_manifest(repository, ref, accept, eager=eager),
        )

    async def _ask_manifest(
        self,
        connector: Connector,
        repository: str,
        ref: Digest | str,
        accept: Sequence[str] | None,
    ) -> Manifest | None:
        """One connector's answer, verified when asked by digest. Raises on failure."""
        self._count(connector, "get_manifest")
        manifest = await connector.get_manifest(repository, str(ref), accept=accept)
        if manifest is None:
            return None
        if not isinstance(manifest, Manifest):
            raise ManifestInvalid(f"connector {connector.name!r} returned {type(manifest)!r}")
        if isinstance(ref, Digest) and not ref.matches(manifest.data):
            raise DigestMismatch(
                f"connector {connector.name!r} returned a manifest that does not match {ref}",
                digest=ref,
                connector=connector.name,
                repository=repository,
            )
        return manifest

    async def _fetch_manifest(
        self,
        repository: str,
        ref: Digest | str,
        accept: Sequence[str] | None,
        *,
        eager: bool,
        order: Sequence[Connector] | None = None,
    ) -> tuple[Manifest, str]:
        failures: dict[str, BaseException] = {}
        key = str(ref)
        for connector in order if order is not None else self._serving(repository):
            if self._negative_hit(connector, "manifest", repository, key):
                continue
            try:
                manifest = await self._ask_manifest(connector, repository, ref, accept)
            except Exception as exc:
                failures[connector.name] = self._failed(connector, exc, f"{repository}:{key}")
                continue
            if manifest is None:
                self._remember_miss(connector, "manifest", repository, key)
                continue
            self.stats.hits[connector.name] += 1
            await self._keep_manifest(repository, ref, manifest, connector, eager=eager)
            return manifest, connector.name
        raise self._give_up(
            ManifestUnknown, f"manifest {repository}:{key}", failures, repository=repository
        )

    async def _keep_manifest(
        self,
        repository: str,
        ref: Digest | str,
        manifest: Manifest,
        connector: Connector,
        *,
        eager: bool,
    ) -> None:
        policy = self.policy_for(connector.name)
        if policy.cache_manifests:
            await self.manifests.put_manifest(repository, manifest)
            if isinstance(ref, str):
                existing = await self.manifests.get_tag(repository, ref)
                if existing is None or not existing.local:
                    await self.manifests.set_tag(
                        repository,
                        ref,
                        TagRecord(
                            manifest.digest, manifest.media_type, self.clock(), connector.name
                        ),
                    )
        if eager and policy.eager:
            self._spawn(self._eager, repository, manifest, policy)

    async def _revalidate(
        self,
        repository: str,
        tag: str,
        record: TagRecord,
        accept: Sequence[str] | None,
        *,
        eager: bool,
    ) -> tuple[Manifest, str]:
        """HEAD the tag where it came from, then the others; compare digests."""
        self.stats.revalidations += 1
        serving = self._serving(repository)
        order = [c for c in serving if c.name == record.source]
        order += [c for c in serving if c.name != record.source]
        failures: dict[str, BaseException] = {}
        for connector in order:
            if self._negative_hit(connector, "manifest", repository, tag):
                continue
            self._count(connector, "head_manifest")
            try:
                found = await connector.head_manifest(repository, tag)
            except Exception as exc:
                failures[connector.name] = self._failed(connector, exc, f"{repository}:{tag}")
                continue
            if found is None:
                self._remember_miss(connector, "manifest", repository, tag)
                continue
            if found.digest == record.digest:
                local = await self.manifests.get_manifest(repository, record.digest)
                if local is not None:
                    await self.manifests.set_tag(
                        repository,
                        tag,
                        TagRecord(record.digest, local.media_type, self.clock(), connector.name),
                    )
                    self.stats.hits[self.name] += 1
                    return local, self.name
            # Changed (or lost locally): fetch the new content by its digest,
            # which is immutable and verifiable, then move the tag.
            try:
                manifest = await self._ask_manifest(connector, repository, found.digest, accept)
            except Exception as exc:
                failures[connector.name] = self._failed(connector, exc, f"{repository}:{tag}")
                continue
            if manifest is None:
                self._remember_miss(connector, "manifest", repository, str(found.digest))
                continue
            self.stats.hits[connector.name] += 1
            await self._keep_manifest(repository, tag, manifest, connector, eager=eager)
            return manifest, connector.name

        real_failures = {k: v for k, v in failures.items() if not isinstance(v, ConnectorCycle)}
        if real_failures or not order:
            # Nobody could confirm or deny the tag (every upstream failed, or no
            # connector serves the repository any more): it is not "gone", it
            # is unconfirmed, and stale_if_error says how long that is fine.
            policy = self.policy_for(record.source)
            decision = policy.stale_decision(record, self.clock())
            if decision is StaleDecision.SERVE_STALE:
                local = await self.manifests.get_manifest(repository, record.digest)
                if local is not None:
                    self.stats.stale_serves += 1
                    log.warning("serving stale tag %s:%s (every upstream failed)", repository, tag)
                    return local, self.name
            elif decision is StaleDecision.FAIL:
                pass
            else:  # pragma: no cover - exhaustive
                raise AssertionError(decision)
            if not real_failures:
                raise ManifestUnknown(
                    f"tag {repository}:{tag} expired and no connector can confirm it",
                    repository=repository,
                )
            raise self._give_up(
                ManifestUnknown, f"tag {repository}:{tag}", failures, repository=repository
            )
        # Every upstream answered that the tag is gone: so is our copy of it.
        await self.manifests.delete_tag(repository, tag)
        raise ManifestUnknown(
            f"tag {repository}:{tag} is no longer known upstream", repository=repository
        )

    # -- blobs --------------------------------------------------------------

    async def stat_blob(self, repository: str, digest: Digest | str) -> Descriptor:
        """The blob's descriptor; asks connectors (HEAD) when it is not held here."""
        validate_repository(repository)
        d = Digest.parse(digest)
        d.hasher()  # Unsupported now, before any I/O, if it cannot be verified
        self._open()
        with entered(self):
            local = await self.blobs.stat(d)
            if local is not None:
                self.stats.hits[self.name] += 1
                return local
            flight = self._flights.get(d)
            if flight is not None and flight.size is not None and flight.error is None:
                return Descriptor("application/octet-stream", d, flight.size)
            failures: dict[str, BaseException] = {}
            for connector in self._serving(repository):
                if self._negative_hit(connector, "blob", repository, str(d)):
                    continue
                self._count(connector, "stat_blob")
                try:
                    found = await connector.stat_blob(repository, d)
                except Exception as exc:
                    failures[connector.name] = self._failed(connector, exc, str(d))
                    continue
                if found is None:
                    self._remember_miss(connector, "blob", repository, str(d))
                    continue
                self.stats.hits[connector.name] += 1
                return found
            raise self._give_up(BlobUnknown, f"blob {d}", failures, repository=repository, digest=d)

    async def open_blob(
        self, repository: str, digest: Digest | str, *, offset: int = 0
    ) -> BlobStream:
        """Stream a blob from ``offset``: from the store, or through one shared fetch.

        ``BlobStream.source`` names where the bytes come from. Under a caching
        policy the blob is verified and committed here before its last byte
        reaches any reader.
        """
        validate_repository(repository)
        d = Digest.parse(digest)
        d.hasher()  # Unsupported now, before any I/O, if it cannot be verified
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"offset must be a non-negative integer, not {offset!r}")
        self._open()
        with entered(self):
            flight = self._flights.get(d)
            if flight is None:
                local = await self.blobs.open(d, offset=offset)
                if local is not None:
                    self.stats.hits[self.name] += 1
                    return BlobStream(
                        d,
                        local.size,
                        _counted(local, self._served),
                        offset=offset,
                        source=self.name,
                    )
            return await self._join_flight(repository, d, offset)

    async def _join_flight(self, repository: str, digest: Digest, offset: int) -> BlobStream:
        flight = self._flights.get(digest)
        if flight is not None:
            if would_deadlock(flight):
                raise ConnectorCycle(
                    f"request for {digest} would wait on itself through {self.name!r}",
                    connector=self.name,
                    digest=digest,
                )
            self.stats.joined_waiters += 1
        else:
            flight = self._start_flight(repository, digest)
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
                local = await self.blobs.open(digest, offset=offset)
                if local is not None:
                    flight.release()
                    return BlobStream(
                        digest,
                        local.size,
                        _counted(local, self._served),
                        offset=offset,
                        source=flight.source,
                    )
        except BaseException:
            flight.release()
            raise
        return flight.stream(offset, on_bytes=self._served)

    def _start_flight(self, repository: str, digest: Digest, *, pin: bool = False) -> BlobFlight:
        flight = BlobFlight(digest, spool_dir=self._spool_dir)
        self._flights[digest] = flight
        self._spawn(self._fly, repository, flight, pin, work=flight)
        return flight

    async def _fly(self, repository: str, flight: BlobFlight, pin: bool) -> None:
        """The background side of a shared fetch: find a source, stream, verify, commit."""
        digest = flight.digest
        error: BaseException | None = None
        try:
            local = await self.blobs.stat(digest)
            if local is not None:
                # Committed by a fetch that ended while this one was being set up:
                # readers are sent to the store (see _join_flight).
                flight.size, flight.source = local.size, self.name
                flight.cached = flight.verified = True
                return
            failures: dict[str, BaseException] = {}
            for connector in self._blob_sources(repository, digest):
                if self._negative_hit(connector, "blob", repository, str(digest)):
                    continue
                self._count(connector, "open_blob")
                try:
                    stream = await connector.open_blob(repository, digest, offset=0)
                except Exception as exc:
                    failures[connector.name] = self._failed(connector, exc, str(digest))
                    continue
                if stream is None:
                    self._remember_miss(connector, "blob", repository, str(digest))
                    continue
                stream.defer_verification()  # _transfer hashes every byte itself
                self.stats.hits[connector.name] += 1
                try:
                    await self._transfer(repository, flight, connector, stream, pin)
                except UpstreamDigestMismatch as exc:
                    if not flight.replaceable:
                        raise  # readers hold bytes from this source: it cannot be undone
                    failures[connector.name] = exc
                    continue  # nobody saw a byte: the next source takes over
                return
            error = self._give_up(
                BlobUnknown, f"blob {digest}", failures, repository=repository, digest=digest
            )
        except Exception as exc:
            error = exc
        except BaseException:
            error = ResolverClosed(f"resolver {self.name!r} closed", digest=digest)
            raise
        finally:
            if self._flights.get(digest) is flight:
                del self._flights[digest]
            flight.finish(error)

    def _blob_sources(self, repository: str, digest: Digest) -> list[Connector]:
        """The connectors to ask for a blob, in order.

        A connector that recently sent wrong bytes for this digest is asked
        last rather than not at all: the next source gets its chance first,
        and a sole upstream that has recovered is still reached (bad bytes are
        a failure, never remembered as a miss).
        """
        now = self.clock()
        good: list[Connector] = []
        doubtful: list[Connector] = []
        for connector in self._serving(repository):
            until = self._suspect.get((connector.name, digest))
            (doubtful if until is not None and now < until else good).append(connector)
        return good + doubtful

    async def _transfer(
        self,
        repository: str,
        flight: BlobFlight,
        connector: Connector,
        stream: BlobStream,
        pin: bool,
    ) -> None:
        digest = flight.digest
        size = stream.size
        policy = self.policy_for(connector.name)
        cache = pin or policy.caches_blob(size)
        try:
            async with AsyncExitStack() as stack:
                writer = None
                verifier = None
                if cache:
                    writer = await stack.enter_async_context(self.blobs.ingest(digest, size))
                    flight.reopen = functools.partial(self._reopen, digest)
                else:
                    verifier = DigestVerifier(digest, size)
                read_back = getattr(writer, "read_back", None)
                await flight.begin(size, connector.name, read_back=read_back)
                sink = writer.write if writer is not None else verifier.aupdate  # type: ignore[union-attr]
                resumes = 0
                while True:
                    try:
                        await self._pump(flight, connector, stream, sink)
                        break
                    except UpstreamError as exc:
                        if isinstance(exc, DigestMismatch) or resumes >= MAX_RESUMES:
                            raise
                        resumes += 1
                        self.stats.resumes += 1
                        log.info(
                            "resuming %s from %r at byte %d (%s)",
                            digest,
                            connector.name,
                            flight.received,
                            exc,
                        )
                        self._count(connector, "open_blob")
                        reopened = await connector.open_blob(
                            repository, digest, offset=flight.received
                        )
                        if reopened is None:
                            raise
                        stream = reopened
                if writer is not None:
                    await writer.commit()
                    flight.cached = True
                else:
                    assert verifier is not None
                    verifier.verify()
                flight.mark_verified()
        except DigestMismatch as exc:
            self.stats.verification_failures += 1
            self.stats.upstream_errors[connector.name] += 1
            self._suspect[(connector.name, digest)] = self.clock() + max(policy.negative_ttl, 1.0)
            log.warning("connector %r sent wrong bytes for %s: %s", connector.name, digest, exc)
            raise UpstreamDigestMismatch(
                f"connector {connector.name!r} sent bytes that do not match {digest}",
                connector=connector.name,
                digest=digest,
                repository=repository,
            ) from exc
        except UpstreamError:
            self.stats.upstream_errors[connector.name] += 1
            raise

    async def _reopen(self, digest: Digest, offset: int) -> BlobStream | None:
        return await self.blobs.open(digest, offset=offset)

    async def _pump(
        self,
        flight: BlobFlight,
        connector: Connector,
        stream: BlobStream,
        sink: Callable[[bytes], Coroutine[Any, Any, None]],
    ) -> None:
        """Move one upstream stream into ``sink`` and the flight; raise if it ends short.

        Receiving runs ahead of storing by up to :data:`READ_AHEAD` chunks, so
        the network, the hashing and the disk work overlap instead of taking
        turns.
        """
        size = stream.size
        failures: list[BaseException] = []
        send, receive = anyio.create_memory_object_stream[bytes](READ_AHEAD)

        async def read_ahead() -> None:
            try:
                async with send, aclosing(coalesce(stream)) as chunks:
                    async for chunk in chunks:
                        await send.send(chunk)
            except Exception as exc:  # raised below, after what arrived is stored
                failures.append(exc)

        async with stream:
            skip = flight.received - stream.offset
            if skip < 0 or stream.size != flight.size:
                raise UpstreamError(
                    f"connector {connector.name!r} resumed at {stream.offset} of"
                    f" {stream.size} bytes, not at {flight.received} of {flight.size}",
                    connector=connector.name,
                    digest=flight.digest,
                )
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_ahead)
                try:
                    async with receive:
                        async for chunk in receive:
                            if skip:
                                # A resumed source that started before where we are
                                # (a server ignoring Range): drop what we have.
                                dropped = min(skip, len(chunk))
                                chunk, skip = chunk[dropped:], skip - dropped
                                if not chunk:
                                    continue
                            if flight.received + len(chunk) > size:
                                raise DigestMismatch(
                                    f"connector {connector.name!r} sent more than {size} bytes",
                                    connector=connector.name,
                                    digest=flight.digest,
                                )
                            await _store_chunk(flight, sink, chunk)
                            self.stats.bytes_from_upstream[connector.name] += len(chunk)
                except Exception as exc:
                    failures.insert(0, exc)  # the storing side's error explains the rest
                    tg.cancel_scope.cancel()
        if failures:
            raise failures[0]
        if flight.received < size:
            raise UpstreamError(
                f"connector {connector.name!r} ended the blob after "
                f"{flight.received} of {size} bytes",
                connector=connector.name,
                digest=flight.digest,
            )

    # -- writes -------------------------------------------------------------

    async def push_blob(
        self, repository: str, data: bytes | AsyncIterable[bytes], *, digest: Digest | str
    ) -> Descriptor:
        """Store a blob, verified against ``digest``; ``DigestMismatch`` stores nothing."""
        validate_repository(repository)
        d = Digest.parse(digest)
        d.hasher()  # Unsupported algorithms fail before any byte is read.
        self._open()
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        async with self.blobs.ingest(d, size) as writer:
            if isinstance(data, (bytes, bytearray, memoryview)):
                view = memoryview(data)
                for start in range(0, len(view), 1024 * 1024):
                    await writer.write(bytes(view[start : start + 1024 * 1024]))
            else:
                async with aclosing(coalesce(_aiter(data))) as chunks:
                    async for chunk in chunks:
                        await writer.write(chunk)
            return await writer.commit()

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor:
        """Store a manifest (and tag it), once everything it references resolves.

        Content that resolves only through a connector is accepted (as ProGet
        does); with ``pin_on_push`` it is copied here first. Otherwise
        ``ManifestBlobUnknown`` lists what resolves nowhere. A manifest's
        ``subject`` need not exist (OCI distribution-spec, "Pushing Manifests
        with Subject").
        """
        validate_repository(repository)
        if tag is not None:
            validate_tag(tag)
        if not isinstance(media_type, str) or not media_type:
            raise ManifestInvalid("push_manifest needs the manifest's media type")
        manifest = Manifest.parse(data, media_type)
        self._open()
        with entered(self):
            missing: list[Descriptor] = []
            await self._ensure_references(repository, manifest, missing)
            if missing:
                raise ManifestBlobUnknown(
                    f"manifest {manifest.digest} references content that resolves nowhere: "
                    + ", ".join(str(d.digest) for d in missing),
                    missing=missing,
                    repository=repository,
                    digest=manifest.digest,
                )
            await self.manifests.put_manifest(repository, manifest)
            if tag is not None:
                await self.manifests.set_tag(
                    repository, tag, TagRecord(manifest.digest, manifest.media_type, self.clock())
                )
            return manifest.descriptor()

    async def _ensure_references(
        self, repository: str, manifest: Manifest, missing: list[Descriptor]
    ) -> None:
        pin = self.policy.pin_on_push
        for child in manifest.manifests:
            local = await self.manifests.get_manifest(repository, child.digest)
            if local is not None:
                continue
            if pin:
                try:
                    fetched, _ = await self._fetch_manifest(
                        repository, child.digest, None, eager=False
                    )
                except NotFound:
                    missing.append(child)
                    continue
                await self.manifests.put_manifest(repository, fetched)
                await self._ensure_references(repository, fetched, missing)
            elif not await self._manifest_somewhere(repository, child.digest):
                missing.append(child)
        for blob in manifest.blobs():
            if _is_foreign(blob):
                continue
            if await self.blobs.stat(blob.digest) is not None:
                continue
            if pin:
                if not await self._pin_blob(repository, blob.digest):
                    missing.append(blob)
            elif await self._blob_location(repository, blob.digest) is None:
                missing.append(blob)

    async def _pin_blob(self, repository: str, digest: Digest) -> bool:
        """Copy a blob here through a shared fetch; whether it is now held here."""
        for _ in range(2):
            flight = self._flights.get(digest)
            if flight is None:
                flight = self._start_flight(repository, digest, pin=True)
            await flight.finished.wait()
            if await self.blobs.stat(digest) is not None:
                return True
            if flight.error is not None and not isinstance(flight.error, NotFound):
                raise copy_error(flight.error)
        return False

    async def delete_manifest(self, repository: str, reference: str) -> None:
        """Delete a tag, or a manifest by digest together with the tags naming it.

        Only what this registry holds is deleted; connectors are read-only.
        """
        validate_repository(repository)
        ref = _parse_reference(reference)
        self._open()
        if isinstance(ref, str):
            if not await self.manifests.delete_tag(repository, ref):
                raise ManifestUnknown(
                    f"tag {repository}:{ref} is not held here", repository=repository
                )
            return
        if await self.manifests.get_manifest(repository, ref) is None:
            raise ManifestUnknown(
                f"manifest {ref} is not held here", repository=repository, digest=ref
            )
        for tag in await self.manifests.tags(repository) or []:
            record = await self.manifests.get_tag(repository, tag)
            if record is not None and record.digest == ref:
                await self.manifests.delete_tag(repository, tag)
        await self.manifests.delete_manifest(repository, ref)

    # -- listing ------------------------------------------------------------

    async def tags(
        self, repository: str, *, n: int | None = None, last: str | None = None
    ) -> list[str]:
        """Tags from here and every connector that can list, merged, sorted, paged.

        ``last`` is exclusive, ``n`` caps the count (distribution-spec
        "Listing Tags"). ``NameUnknown`` when no source knows the repository.
        """
        validate_repository(repository)
        _check_paging(n, last)
        self._open()
        with entered(self):
            local = await self.manifests.tags(repository)
            merged = set(local or [])
            known = local is not None
            for connector in self._serving(repository):
                self._count(connector, "tags")
                try:
                    listed = await connector.tags(repository)
                except Exception as exc:
                    self._failed(connector, exc, f"tags of {repository}")
                    self._skip_listing(connector, "could not be asked")
                    continue
                if listed is None:
                    self._skip_listing(connector, "cannot list tags")
                    continue
                known = known or bool(listed)
                merged.update(listed)
            if not known:
                raise NameUnknown(
                    f"repository {repository!r} is not known to {self.name!r} or its connectors",
                    repository=repository,
                )
            return _page(merged, n, last)

    async def repositories(self, *, n: int | None = None, last: str | None = None) -> list[str]:
        """Repositories from here and every connector with a catalog, merged, sorted, paged."""
        _check_paging(n, last)
        self._open()
        with entered(self):
            merged = set(await self.manifests.repositories())
            for connector in list(self.connectors):
                self._count(connector, "repositories")
                try:
                    listed = await connector.repositories()
                except Exception as exc:
                    self._failed(connector, exc, "the catalog")
                    self._skip_listing(connector, "could not be asked")
                    continue
                if listed is None:
                    self._skip_listing(connector, "has no catalog")
                    continue
                merged.update(r for r in listed if _serves(connector, r))
            return _page(merged, n, last)

    def _skip_listing(self, connector: Connector, why: str) -> None:
        self.stats.listings_skipped += 1
        log.info("listing skipped connector %r: it %s", connector.name, why)

    # -- integrity ----------------------------------------------------------

    async def check(self, repository: str, reference: str) -> IntegrityReport:
        """Where every reference of a manifest resolves: here, a connector, or nowhere.

        A tag is resolved as :meth:`get_manifest` would; beyond that this only
        inspects: nothing it looks up through connectors is cached, and no
        eager caching starts.
        """
        validate_repository(repository)
        ref = _parse_reference(reference)
        self._open()
        with entered(self):
            manifest, _ = await self._resolve_manifest(repository, ref, None, eager=False)
            entries: list[IntegrityEntry] = []
            seen: set[Digest] = set()
            await self._inspect(repository, manifest, entries, seen)
            return IntegrityReport(repository, manifest.descriptor(), tuple(entries))

    async def _inspect(
        self,
        repository: str,
        manifest: Manifest,
        entries: list[IntegrityEntry],
        seen: set[Digest],
    ) -> None:
        children = {d.digest for d in manifest.manifests}
        for descriptor in manifest.references():
            if descriptor.digest in seen:
                continue
            seen.add(descriptor.digest)
            if descriptor.digest in children or (
                descriptor is manifest.subject or _is_manifest(descriptor)
            ):
                location, child = await self._manifest_location(repository, descriptor.digest)
                entries.append(IntegrityEntry(descriptor, location))
                if child is not None and descriptor.digest in children:
                    await self._inspect(repository, child, entries, seen)
            else:
                location = await self._blob_location(repository, descriptor.digest)
                entries.append(IntegrityEntry(descriptor, location))

    async def _manifest_somewhere(self, repository: str, digest: Digest) -> bool:
        location, _ = await self._manifest_location(repository, digest)
        return location is not None

    async def _manifest_location(
        self, repository: str, digest: Digest
    ) -> tuple[str | None, Manifest | None]:
        local = await self.manifests.get_manifest(repository, digest)
        if local is not None:
            return self.name, local
        for connector in self._serving(repository):
            try:
                found = await self._ask_manifest(connector, repository, digest, None)
            except Exception as exc:
                self._failed(connector, exc, str(digest))
                continue
            if found is not None:
                return connector.name, found
        return None, None

    async def _blob_location(self, repository: str, digest: Digest) -> str | None:
        if await self.blobs.stat(digest) is not None:
            return self.name
        for connector in self._serving(repository):
            self._count(connector, "stat_blob")
            try:
                found = await connector.stat_blob(repository, digest)
            except Exception as exc:
                self._failed(connector, exc, str(digest))
                continue
            if found is not None:
                return connector.name
        return None

    # -- eager caching --------------------------------------------------------

    async def _eager(self, repository: str, manifest: Manifest, policy: CachingPolicy) -> None:
        """Cache in the background what a manifest references (errors are logged)."""
        try:
            with entered(self):
                if manifest.is_index:
                    async with anyio.create_task_group() as tg:
                        for child in manifest.manifests:
                            if policy.wants_child(child):
                                tg.start_soon(self._eager_child, repository, child.digest)
                else:
                    await self._eager_blobs(repository, manifest)
        except Exception:
            log.exception("eager caching of %s@%s failed", repository, manifest.digest)

    async def _eager_child(self, repository: str, digest: Digest) -> None:
        try:
            child, _ = await self._resolve_manifest(repository, digest, None, eager=False)
        except DockerConnectError as exc:
            log.warning("eager caching could not get %s@%s: %s", repository, digest, exc)
            return
        if not child.is_index:
            await self._eager_blobs(repository, child)

    async def _eager_blobs(self, repository: str, manifest: Manifest) -> None:
        async with anyio.create_task_group() as tg:
            for blob in manifest.blobs():
                if not _is_foreign(blob):
                    tg.start_soon(self._eager_blob, repository, blob.digest)

    async def _eager_blob(self, repository: str, digest: Digest) -> None:
        async with self._eager_limit:
            if await self.blobs.stat(digest) is not None:
                return
            flight = self._flights.get(digest)
            if flight is None:
                self.stats.eager_fetches += 1
                flight = self._start_flight(repository, digest)
            await flight.finished.wait()
            if flight.error is not None:
                log.warning("eager caching of %s failed: %s", digest, flight.error)


async def _store_chunk(
    flight: BlobFlight, sink: Callable[[bytes], Coroutine[Any, Any, None]], chunk: bytes
) -> None:
    """Spool and cache one chunk in parallel (two worker threads, two cores)."""
    await together(lambda: flight.append(chunk), lambda: sink(chunk))


async def _counted(stream: BlobStream, count: Callable[[int], None]) -> AsyncIterator[bytes]:
    async with stream:
        async for chunk in stream:
            count(len(chunk))
            yield chunk


async def _aiter(data: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    async for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"blob data must be bytes, not {type(chunk).__name__}")
        yield bytes(chunk)


def _serves(connector: Connector, repository: str) -> bool:
    try:
        return connector.serves(repository)
    except Exception:
        return False


def _check_paging(n: int | None, last: str | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise PaginationInvalid(f"n must be a non-negative integer, not {n!r}")
    if last is not None and not isinstance(last, str):
        raise PaginationInvalid("last must be a string")


def _page(items: set[str], n: int | None, last: str | None) -> list[str]:
    ordered = sorted(items)
    if last is not None:
        ordered = [item for item in ordered if item > last]
    if n is not None:
        ordered = ordered[:n]
    return ordered
