"""One walk over what a manifest references, shared by pin-on-push, check() and eager caching.

``check(..., referrers=True)`` and eager caching under ``eager_referrers``
go on past what the manifest references, to its referrers (and theirs):
each referrer is reported or cached like a child, with what it references.

The walk is iterative (an explicit stack of iterators), so an index chain a
thousand deep is walked as any other, in the order a recursive walk would
take: each reference is visited once, and a child the visitor returns is
walked before the next sibling.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator

import anyio

from dockerconnect._chain import entered
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, Manifest
from dockerconnect._policy import CachingPolicy
from dockerconnect._protocols import IntegrityEntry, IntegrityReport
from dockerconnect._resolve.blobs import BlobFetch
from dockerconnect._resolve.manifests import Manifests
from dockerconnect._resolve.referrers import Referrers
from dockerconnect.errors import DockerConnectError, NotFound

__all__ = [
    "EAGER_CONCURRENCY",
    "MAX_REFERRERS_WALKED",
    "Visit",
    "Walks",
    "everything",
    "is_foreign",
    "needed",
    "walk",
]

log = logging.getLogger("dockerconnect.resolver")
#: INFO: each eager walk's start and end (what it visited, how long it took).
eager_log = logging.getLogger("dockerconnect.resolver.eager")

#: Blobs and child manifests fetched at once by eager caching, per resolver.
EAGER_CONCURRENCY = 4

#: Referrers (and referrers of referrers) one check() or eager walk follows at
#: most: an upstream cannot make a walk endless by chaining artifacts.
MAX_REFERRERS_WALKED = 1024

#: Called for each reference: ``(parent, descriptor)``; returns the manifest to
#: walk into next (a child it fetched), or ``None``.
Visit = Callable[[Manifest, Descriptor], Awaitable["Manifest | None"]]

_NON_DISTRIBUTABLE = ("nondistributable", "foreign")


def is_foreign(descriptor: Descriptor) -> bool:
    """Non-distributable ("foreign") layers live at their urls, not in registries
    (image-spec layer.md "Non-Distributable Layers"); no registry is asked for them."""
    return any(marker in descriptor.media_type for marker in _NON_DISTRIBUTABLE)


def everything(manifest: Manifest) -> Iterable[Descriptor]:
    """Every reference: config, layers, children, subject (what check() reports)."""
    return manifest.references()


def needed(manifest: Manifest) -> Iterable[Descriptor]:
    """What a pull of the manifest needs: an index's children, an image's blobs."""
    return (*manifest.manifests, *manifest.blobs())


def _check_child(ref: Descriptor, child: Manifest) -> None:
    """``ManifestInvalid`` unless a child manifest has the size its index declares.

    The child is found by ``ref``'s digest (of any algorithm), so only the
    size is compared, against the child's exact bytes.
    """
    ref.check_held(Descriptor(ref.media_type, ref.digest, len(child.data)))


async def walk(
    root: Manifest,
    visit: Visit,
    *,
    follow: Callable[[Manifest], Iterable[Descriptor]] = everything,
    seen: set[Digest] | None = None,
) -> None:
    """Visit each reference reachable from ``root`` once, depth first, iteratively.

    ``seen`` (digests already visited) may be shared between walks, so that
    a later walk skips what an earlier one visited.
    """
    seen = set() if seen is None else seen
    stack: list[tuple[Manifest, Iterator[Descriptor]]] = [(root, iter(follow(root)))]
    while stack:
        parent, references = stack[-1]
        descriptor = next(references, None)
        if descriptor is None:
            stack.pop()
            continue
        if descriptor.digest in seen:
            continue
        seen.add(descriptor.digest)
        child = await visit(parent, descriptor)
        if child is not None:
            stack.append((child, iter(follow(child))))


class Walks:
    """The three walks a resolver makes: what a push lacks, check(), eager caching."""

    def __init__(
        self, owner: object, *, manifests: Manifests, blobs: BlobFetch, referrers: Referrers
    ) -> None:
        self._owner = owner
        self._manifests = manifests
        self._blobs = blobs
        self._referrers = referrers
        self._eager_limit = anyio.CapacityLimiter(EAGER_CONCURRENCY)

    def reset(self) -> None:
        """A fresh limiter for a fresh event loop (the resolver was entered again)."""
        self._eager_limit = anyio.CapacityLimiter(EAGER_CONCURRENCY)

    async def missing(self, repository: str, manifest: Manifest, *, pin: bool) -> list[Descriptor]:
        """What a pushed manifest needs that resolves nowhere (with ``pin``: copied here)."""
        missing: list[Descriptor] = []

        async def visit(parent: Manifest, ref: Descriptor) -> Manifest | None:
            if ref in parent.manifests:
                return await self._needed_child(repository, ref, pin, missing)
            await self._needed_blob(repository, ref, pin, missing)
            return None

        await walk(manifest, visit, follow=needed)
        return missing

    async def _needed_child(
        self, repository: str, ref: Descriptor, pin: bool, missing: list[Descriptor]
    ) -> Manifest | None:
        manifests = self._manifests
        if pin:
            # Marked before it is stored (or if it is held already as a cache).
            await manifests.usage.pushed_manifest(repository, ref.digest)
        local = await manifests.store.get_manifest(repository, ref.digest)
        if local is not None:
            _check_child(ref, local)
            return None
        if not pin:
            location, found = await manifests.location(repository, ref.digest)
            if location is None or found is None:
                missing.append(ref)
            else:
                _check_child(ref, found)
            return None
        try:
            fetched = (await manifests.resolve(repository, ref.digest)).manifest
        except NotFound:
            missing.append(ref)
            return None
        _check_child(ref, fetched)
        await manifests.store.put_manifest(repository, fetched)
        return fetched

    async def _needed_blob(
        self, repository: str, ref: Descriptor, pin: bool, missing: list[Descriptor]
    ) -> None:
        """Whether a referenced blob resolves, and has the size the manifest declares."""
        blobs = self._blobs
        if is_foreign(ref):
            return
        if pin:
            # Pinned from now on, also if it is held already as a cache.
            await blobs.usage.pushed_blob(ref.digest)
        held = await blobs.store.stat(ref.digest)
        if held is None and pin:
            if await blobs.pin(repository, ref.digest):
                held = await blobs.store.stat(ref.digest)
        elif held is None:
            held = await blobs.find(repository, ref.digest)
        if held is None:
            missing.append(ref)
        else:
            ref.check_held(held)

    async def report(
        self, repository: str, manifest: Manifest, *, referrers: bool = False
    ) -> IntegrityReport:
        """Where each reference resolves: here, a connector, or nowhere. Caches nothing.

        With ``referrers``, also each referrer of the manifest and of an
        index's children (and their referrers), with what each references.
        """
        entries: list[IntegrityEntry] = []
        subjects = [manifest.digest]

        async def visit(parent: Manifest, ref: Descriptor) -> Manifest | None:
            child_of_index = ref in parent.manifests
            if child_of_index or ref is parent.subject or ref.media_type in MANIFEST_MEDIA_TYPES:
                location, child = await self._manifests.location(repository, ref.digest)
                entries.append(IntegrityEntry(ref, location))
                if child_of_index and child is not None:
                    subjects.append(child.digest)
                    return child
                return None
            entries.append(IntegrityEntry(ref, await self._blobs.location(repository, ref.digest)))
            return None

        seen = {manifest.digest}
        await walk(manifest, visit, seen=seen)
        if referrers:

            async def into(ref: Descriptor) -> Manifest | None:
                location, child = await self._manifests.location(repository, ref.digest)
                entries.append(IntegrityEntry(ref, location))
                return child

            await self._each_referrer(repository, subjects, seen, into, visit, eager=False)
        return IntegrityReport(repository, manifest.descriptor(), tuple(entries))

    async def _each_referrer(
        self,
        repository: str,
        subjects: list[Digest],
        seen: set[Digest],
        into: Callable[[Descriptor], Awaitable[Manifest | None]],
        visit: Visit,
        *,
        eager: bool,
    ) -> None:
        """For each referrer of ``subjects`` (and of those referrers), breadth first:
        ``into`` gets its manifest, whose references ``visit`` then walks.

        ``eager``: connector answers are remembered and a listing that fails
        is logged and passed over; otherwise (``check()``) nothing new is
        remembered and the failure is the caller's.
        """
        queue = deque(subjects)
        walked = 0
        while queue:
            subject = queue.popleft()
            try:
                found = await self._referrers.lookup(repository, subject, remember=eager)
            except DockerConnectError as exc:
                if not eager:
                    raise
                log.warning("eager caching could not list referrers of %s: %s", subject, exc)
                continue
            for ref in found:
                if ref.digest in seen:
                    continue
                if walked >= MAX_REFERRERS_WALKED:
                    log.warning(
                        "%s: more than %d referrers to follow; the rest are left out",
                        repository, MAX_REFERRERS_WALKED,
                    )  # fmt: skip
                    return
                walked += 1
                seen.add(ref.digest)
                child = await into(ref)
                if child is not None:
                    await walk(child, visit, follow=needed if eager else everything, seen=seen)
                    queue.append(ref.digest)

    async def eager(self, repository: str, manifest: Manifest, policy: CachingPolicy) -> None:
        """Cache in the background what a manifest references (errors are logged).

        Child manifests and blobs share one limit (:data:`EAGER_CONCURRENCY`),
        so a large index never crowds out other requests to the connector.
        With ``eager_referrers``, the referrers of the manifest and of each
        child it cached (and theirs) are cached too, with their blobs.
        """
        counts = {"children": 0, "blobs": 0}
        started = anyio.current_time()
        eager_log.info("eager caching %s@%s: started", repository, manifest.digest)
        try:
            with entered(self._owner):
                async with anyio.create_task_group() as tg:
                    subjects = [manifest.digest]

                    async def visit(parent: Manifest, ref: Descriptor) -> Manifest | None:
                        if ref in parent.manifests:
                            counts["children"] += 1
                            child = await self._eager_child(repository, ref, policy)
                            if child is not None:
                                subjects.append(child.digest)
                            return child
                        if not is_foreign(ref):
                            counts["blobs"] += 1
                            tg.start_soon(self._eager_blob, repository, ref.digest)
                        return None

                    seen = {manifest.digest}
                    await walk(manifest, visit, follow=needed, seen=seen)
                    if policy.eager_referrers:

                        async def into(ref: Descriptor) -> Manifest | None:
                            return await self._eager_manifest(repository, ref.digest)

                        await self._each_referrer(
                            repository, subjects, seen, into, visit, eager=True
                        )
        except Exception:
            log.exception("eager caching of %s@%s failed", repository, manifest.digest)
            return
        eager_log.info(
            "eager caching %s@%s: done, %d child manifests and %d blobs in %.1fs",
            repository, manifest.digest, counts["children"], counts["blobs"],
            anyio.current_time() - started,
        )  # fmt: skip

    async def _eager_child(
        self, repository: str, child: Descriptor, policy: CachingPolicy
    ) -> Manifest | None:
        if not policy.wants_child(child):
            return None
        return await self._eager_manifest(repository, child.digest)

    async def _eager_manifest(self, repository: str, digest: Digest) -> Manifest | None:
        async with self._eager_limit:
            try:
                resolved = await self._manifests.resolve(repository, digest)
            except DockerConnectError as exc:
                log.warning("eager caching could not get %s@%s: %s", repository, digest, exc)
                return None
        resolved.eager_started = True  # its blobs are this walk's
        return resolved.manifest

    async def _eager_blob(self, repository: str, digest: Digest) -> None:
        async with self._eager_limit:
            await self._blobs.prefetch(repository, digest)
