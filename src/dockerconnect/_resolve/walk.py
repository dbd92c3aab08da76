"""One walk over what a manifest references, shared by pin-on-push, check() and eager caching.

The walk is iterative (an explicit stack of iterators), so an index chain a
thousand deep is walked as any other, in the order a recursive walk would
take: each reference is visited once, and a child the visitor returns is
walked before the next sibling.
"""

from __future__ import annotations

import logging
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
from dockerconnect.errors import DockerConnectError, NotFound

__all__ = ["EAGER_CONCURRENCY", "Visit", "Walks", "everything", "is_foreign", "needed", "walk"]

log = logging.getLogger("dockerconnect.resolver")

#: Blobs and child manifests fetched at once by eager caching, per resolver.
EAGER_CONCURRENCY = 4

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


async def walk(
    root: Manifest,
    visit: Visit,
    *,
    follow: Callable[[Manifest], Iterable[Descriptor]] = everything,
) -> None:
    """Visit each reference reachable from ``root`` once, depth first, iteratively."""
    seen: set[Digest] = set()
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

    def __init__(self, owner: object, *, manifests: Manifests, blobs: BlobFetch) -> None:
        self._owner = owner
        self._manifests = manifests
        self._blobs = blobs
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
        if await manifests.store.get_manifest(repository, ref.digest) is not None:
            return None
        if not pin:
            location, _ = await manifests.location(repository, ref.digest)
            if location is None:
                missing.append(ref)
            return None
        try:
            fetched = (await manifests.resolve(repository, ref.digest)).manifest
        except NotFound:
            missing.append(ref)
            return None
        await manifests.store.put_manifest(repository, fetched)
        return fetched

    async def _needed_blob(
        self, repository: str, ref: Descriptor, pin: bool, missing: list[Descriptor]
    ) -> None:
        blobs = self._blobs
        if is_foreign(ref):
            return
        if pin:
            # Pinned from now on, also if it is held already as a cache.
            await blobs.usage.pushed_blob(ref.digest)
        if await blobs.store.stat(ref.digest) is not None:
            return
        if pin:
            if not await blobs.pin(repository, ref.digest):
                missing.append(ref)
        elif await blobs.location(repository, ref.digest) is None:
            missing.append(ref)

    async def report(self, repository: str, manifest: Manifest) -> IntegrityReport:
        """Where each reference resolves: here, a connector, or nowhere. Caches nothing."""
        entries: list[IntegrityEntry] = []

        async def visit(parent: Manifest, ref: Descriptor) -> Manifest | None:
            child_of_index = ref in parent.manifests
            if child_of_index or ref is parent.subject or ref.media_type in MANIFEST_MEDIA_TYPES:
                location, child = await self._manifests.location(repository, ref.digest)
                entries.append(IntegrityEntry(ref, location))
                return child if child_of_index else None
            entries.append(IntegrityEntry(ref, await self._blobs.location(repository, ref.digest)))
            return None

        await walk(manifest, visit)
        return IntegrityReport(repository, manifest.descriptor(), tuple(entries))

    async def eager(self, repository: str, manifest: Manifest, policy: CachingPolicy) -> None:
        """Cache in the background what a manifest references (errors are logged).

        Child manifests and blobs share one limit (:data:`EAGER_CONCURRENCY`),
        so a large index never crowds out other requests to the connector.
        """
        try:
            with entered(self._owner):
                async with anyio.create_task_group() as tg:

                    async def visit(parent: Manifest, ref: Descriptor) -> Manifest | None:
                        if ref in parent.manifests:
                            return await self._eager_child(repository, ref, policy)
                        if not is_foreign(ref):
                            tg.start_soon(self._eager_blob, repository, ref.digest)
                        return None

                    await walk(manifest, visit, follow=needed)
        except Exception:
            log.exception("eager caching of %s@%s failed", repository, manifest.digest)

    async def _eager_child(
        self, repository: str, child: Descriptor, policy: CachingPolicy
    ) -> Manifest | None:
        if not policy.wants_child(child):
            return None
        async with self._eager_limit:
            try:
                resolved = await self._manifests.resolve(repository, child.digest)
            except DockerConnectError as exc:
                log.warning("eager caching could not get %s@%s: %s", repository, child.digest, exc)
                return None
        resolved.eager_started = True  # its blobs are this walk's
        return resolved.manifest

    async def _eager_blob(self, repository: str, digest: Digest) -> None:
        async with self._eager_limit:
            await self._blobs.prefetch(repository, digest)
