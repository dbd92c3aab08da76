"""Retention: a cache that stays within its bounds (DESIGN.md "Retention").

Two parts. :class:`UsageMarks` is how the other rooms tell the stores what
they hold and why, through the stores' optional
:class:`~dockerconnect.UsageLog` / :class:`~dockerconnect.ManifestUsageLog`
capabilities: pushed content is marked *before* it is written (so it is
never taken for a cache, even after a crash), cached content *after* it is
committed, and every use is a :meth:`~dockerconnect.UsageLog.touch`, which
does no I/O: the uses are written in batches by :meth:`UsageMarks.flush`,
every :data:`FLUSH_EVERY` seconds and before each prune.

:class:`Retention` prunes: idle content first (unused for ``max_idle``),
then least recently used until the cached bytes are at most ``max_bytes``,
every ``interval`` and also as soon as what was cached since the last prune
would take the cache past ``max_bytes`` (admission: room is made before a
blob is committed, so the bound holds at every moment).
It asks the stores to remove each item only if it is *still* unused since
the time it was listed (``remove_cached(unused_since=...)``), so a use, an
ingest or another process's prune racing it keeps the item or is counted
once. Blobs and manifests are one list, in order of last use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import attrs

from dockerconnect._digest import Digest
from dockerconnect._protocols import (
    BlobStore,
    CachedBlob,
    CachedManifest,
    ManifestStore,
    ManifestUsageLog,
    UsageLog,
)
from dockerconnect._stats import ResolverStats
from dockerconnect.errors import DockerConnectError, InvalidInput, Unsupported

__all__ = ["FLUSH_EVERY", "PruneReport", "Retention", "RetentionPolicy", "UsageMarks"]

log = logging.getLogger("dockerconnect.retention")

#: Seconds between batched writes of last-use times (and between checks
#: whether a background prune is due).
FLUSH_EVERY = 10.0


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidInput(
            f"RetentionPolicy.{attribute.name} must be a non-negative number or None, not {value!r}"
        )
    if attribute.name == "interval" and value == 0:
        raise InvalidInput("RetentionPolicy.interval must be positive seconds, or None")


@attrs.frozen(slots=True)
class RetentionPolicy:
    """How much cached content to keep, and how often to prune.

    - ``max_bytes``: the most cached bytes (blobs and manifests fetched
      through connectors) to keep; ``None``: no size bound.
    - ``max_idle``: seconds after its last use (served or fetched) that
      cached content is removed; ``None``: no age bound.
    - ``interval``: seconds between prunes in the resolver's background
      work; ``None``: only when :meth:`Resolver.prune <dockerconnect.Resolver.prune>`
      is called.

    Pushed content is never removed, whatever the bounds.
    """

    max_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    max_idle: float | None = attrs.field(default=None, validator=_optional_positive)
    interval: float | None = attrs.field(default=300.0, validator=_optional_positive)


@attrs.frozen(slots=True)
class PruneReport:
    """What one prune did: items removed, bytes freed, cached bytes kept."""

    removed_blobs: int = 0
    removed_manifests: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0


class UsageMarks:
    """The resolver's side of the stores' usage logs; a no-op for a store without one.

    Marks of pushed content raise (a push that cannot be protected must
    fail); marks of cached content and flushes only log, so that a pull
    never fails for bookkeeping.
    """

    def __init__(
        self,
        blobs: BlobStore | None = None,
        manifests: ManifestStore | None = None,
        *,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        #: Told the size of each item marked cached (retention's running estimate).
        self.on_cached: Callable[[int], None] = lambda size: None
        #: Makes room for a blob about to be cached (retention's admission).
        self.room: Callable[[int], AbstractAsyncContextManager[None]] = _no_room
        self.blobs: UsageLog | None = blobs if isinstance(blobs, UsageLog) else None
        self.manifests: ManifestUsageLog | None = (
            manifests if isinstance(manifests, ManifestUsageLog) else None
        )
        self._clock = clock

    async def pushed_blob(self, digest: Digest) -> None:
        if self.blobs is not None:
            await self.blobs.mark(digest, source=None, at=self._clock())

    async def cached_blob(self, digest: Digest, source: str, size: int) -> None:
        if self.blobs is not None:
            try:
                await self.blobs.mark(digest, source=source, at=self._clock())
            except DockerConnectError as exc:
                log.warning("could not mark blob %s as cached (it is kept): %s", digest, exc)
                return
            self.on_cached(size)

    def used_blob(self, digest: Digest) -> None:
        if self.blobs is not None:
            self.blobs.touch(digest, self._clock())

    async def pushed_manifest(self, repository: str, digest: Digest) -> None:
        if self.manifests is not None:
            await self.manifests.mark_manifest(repository, digest, source=None, at=self._clock())

    async def cached_manifest(
        self, repository: str, digest: Digest, source: str, size: int
    ) -> None:
        if self.manifests is not None:
            try:
                at = self._clock()
                await self.manifests.mark_manifest(repository, digest, source=source, at=at)
            except DockerConnectError as exc:
                log.warning(
                    "could not mark manifest %s@%s as cached (it is kept): %s",
                    repository,
                    digest,
                    exc,
                )
                return
            self.on_cached(size)

    def used_manifest(self, repository: str, digest: Digest) -> None:
        if self.manifests is not None:
            self.manifests.touch_manifest(repository, digest, self._clock())

    async def flush(self) -> None:
        """Write the uses noted since the last flush, to both stores."""
        if self.blobs is not None:
            await self.blobs.flush()
        if self.manifests is not None:
            await self.manifests.flush()


@asynccontextmanager
async def _no_room(size: int) -> AsyncIterator[None]:
    yield


_Item = CachedBlob | CachedManifest

#: An admission prune (to make room for a blob) goes down to this share of
#: ``max_bytes``, so that the next blobs find room without a prune of their own.
LOW_WATER = 0.9


class Retention:
    """Prunes what :class:`UsageMarks` recorded, by a :class:`RetentionPolicy`."""

    def __init__(
        self,
        policy: RetentionPolicy | None,
        marks: UsageMarks,
        *,
        blobs: BlobStore,
        manifests: ManifestStore,
        clock: Callable[[], float],
        stats: ResolverStats,
    ) -> None:
        if policy is not None and not isinstance(policy, RetentionPolicy):
            raise InvalidInput("retention must be a RetentionPolicy or None")
        if policy is not None and marks.blobs is None:
            raise Unsupported(_cannot_prune(blobs))
        if policy is not None and marks.manifests is None:
            log.warning(
                "retention: %s does not record manifest use (ManifestUsageLog);"
                " only blobs are pruned",
                type(manifests).__name__,
            )
        self.policy = policy
        self._marks = marks
        self._blobs = blobs
        self._clock = clock
        self._stats = stats
        self._lock = anyio.Lock()
        # Cached bytes as of the last prune plus what was cached since (None:
        # not known yet), and bytes of blobs being committed that made room.
        self._estimate: int | None = None
        self._reserved = 0
        self._cached_total = 0  # bytes cached by this resolver, ever
        marks.on_cached = self._cached
        marks.room = self._room
        #: Whether a blob is being fetched or read through a shared flight
        #: here (set by the resolver): such a blob is not removed, so a reader
        #: replaying from the store reads it to its end.
        self.in_flight: Callable[[Digest], bool] = lambda digest: False

    def reset(self) -> None:
        """A fresh lock for a fresh event loop (the resolver was entered again)."""
        self._lock = anyio.Lock()
        self._estimate, self._prune_pending = None, False

    def _cached(self, size: int) -> None:
        self._cached_total += size
        if self._estimate is not None:
            self._estimate += size

    @asynccontextmanager
    async def _room(self, size: int) -> AsyncIterator[None]:
        """Around a blob's commit: make room for ``size`` bytes first (admission).

        With ``max_bytes``, the committed cached bytes plus those reserved by
        commits in progress stay within the bound: a blob that would take the
        cache past it has least recently used content removed first (down to
        :data:`LOW_WATER` of the bound), so the cache never holds more than
        ``max_bytes``, save for content in use that could not be removed.
        """
        bound = None if self.policy is None else self.policy.max_bytes
        if bound is None:
            yield
            return
        async with self._lock:
            if self._estimate is None or self._estimate + self._reserved + size > bound:
                target = min(bound - size, int(bound * LOW_WATER)) - self._reserved
                await self._prune_locked(self.policy, max(0, target))  # type: ignore[arg-type]
            self._reserved += size
        try:
            yield
        finally:
            self._reserved -= size

    async def prune(self) -> PruneReport:
        """Remove idle, then least recently used, cached content; see the module docs."""
        if self._marks.blobs is None:
            raise Unsupported(_cannot_prune(self._blobs))
        async with self._lock:
            policy = self.policy or RetentionPolicy(interval=None)
            return await self._prune_locked(policy, policy.max_bytes)

    async def _prune_locked(self, policy: RetentionPolicy, max_bytes: int | None) -> PruneReport:
        before = self._cached_total
        report = await self._prune(policy, max_bytes)
        # What was cached while this prune ran may not have been listed.
        self._estimate = report.kept_bytes + self._cached_total - before
        self._stats.prunes += 1
        self._stats.pruned_blobs += report.removed_blobs
        self._stats.pruned_manifests += report.removed_manifests
        self._stats.pruned_bytes += report.freed_bytes
        self._stats.cached_bytes = report.kept_bytes
        if report.removed_blobs or report.removed_manifests:
            log.info(
                "pruned %d blobs and %d manifests (%d bytes); %d cached bytes kept",
                report.removed_blobs,
                report.removed_manifests,
                report.freed_bytes,
                report.kept_bytes,
            )
        return report

    async def _prune(self, policy: RetentionPolicy, max_bytes: int | None) -> PruneReport:
        await self._marks.flush()
        now = self._clock()
        items: list[_Item] = list(await self._listed())
        items.sort(key=lambda i: i.last_used)
        kept: list[_Item] = []
        removed: list[_Item] = []
        if policy.max_idle is not None:
            idle_since = now - policy.max_idle
            for item in items:
                if item.last_used < idle_since and await self._remove(item, idle_since):
                    removed.append(item)
                else:
                    kept.append(item)
        else:
            kept = items
        if max_bytes is not None:
            total = sum(i.size for i in kept)
            survivors: list[_Item] = []
            for index, item in enumerate(kept):
                if total <= max_bytes:
                    survivors.extend(kept[index:])
                    break
                if await self._remove(item, item.last_used):
                    removed.append(item)
                    total -= item.size
                else:
                    survivors.append(item)  # used meanwhile, or being written: kept
            kept = survivors
        blobs = sum(1 for i in removed if isinstance(i, CachedBlob))
        return PruneReport(
            removed_blobs=blobs,
            removed_manifests=len(removed) - blobs,
            freed_bytes=sum(i.size for i in removed),
            kept_bytes=sum(i.size for i in kept),
        )

    async def _listed(self) -> list[_Item]:
        assert self._marks.blobs is not None
        items: list[_Item] = list(await self._marks.blobs.cached())
        if self._marks.manifests is not None:
            items.extend(await self._marks.manifests.cached_manifests())
        return items

    async def _remove(self, item: _Item, unused_since: float) -> bool:
        """Remove ``item`` if it is still unused since ``unused_since``."""
        if isinstance(item, CachedBlob):
            assert self._marks.blobs is not None
            if self.in_flight(item.digest):
                return False
            done = await self._marks.blobs.remove_cached(item.digest, unused_since=unused_since)
            if done:
                self._stats.emit("pruned", item="blob", digest=item.digest, size=item.size)
            return done
        assert self._marks.manifests is not None
        done = await self._marks.manifests.remove_cached_manifest(
            item.repository, item.digest, unused_since=unused_since
        )
        if done:
            self._stats.emit(
                "pruned",
                item="manifest",
                repository=item.repository,
                digest=item.digest,
                size=item.size,
            )
        return done

    async def run(self) -> None:
        """The background work: flush uses every :data:`FLUSH_EVERY` seconds, and
        prune every ``interval`` seconds (errors are logged, never fatal)."""
        interval = self.policy.interval if self.policy is not None else None
        step = FLUSH_EVERY if interval is None else min(FLUSH_EVERY, interval)
        due = None if interval is None else anyio.current_time() + interval
        while True:
            await anyio.sleep(step)
            if due is not None and anyio.current_time() >= due:
                try:
                    await self.prune()
                except DockerConnectError as exc:
                    log.error("background prune failed: %s", exc)
                except Exception:  # a store's bug must not end the resolver
                    log.exception("background prune failed")
                due = anyio.current_time() + (interval or math.inf)
                continue
            try:
                await self._marks.flush()
            except DockerConnectError as exc:
                log.warning("could not record use of cached content: %s", exc)
            except Exception:
                log.exception("could not record use of cached content")


def _cannot_prune(store: object) -> str:
    return (
        f"retention cannot prune: the blob store {type(store).__name__} does not record"
        " which blobs are a cache and when they were used (it is not a UsageLog);"
        " use MemoryBlobStore or FilesystemBlobStore, or drop retention="
    )
