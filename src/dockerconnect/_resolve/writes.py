"""Writes: pushing blobs and manifests, and deleting manifests, in the stores.

The :class:`~dockerconnect.Resolver` validates each call first; this room
does the work. Pushed content is marked as pushed *before* it is written, so
retention never takes it for a cache, however a crash interleaves.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from contextlib import aclosing

import attrs

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._flight import coalesce
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import BlobStore, ManifestStore, TagRecord
from dockerconnect._resolve.retention import UsageMarks
from dockerconnect._resolve.walk import Walks
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import InvalidInput, ManifestBlobUnknown, ManifestUnknown

__all__ = ["Writes"]


class Writes:
    """Pushes and deletes over one manifest store and one blob store."""

    def __init__(
        self,
        manifests: ManifestStore,
        blobs: BlobStore,
        *,
        walks: Walks,
        usage: UsageMarks,
        clock: Callable[[], float],
        pin_on_push: Callable[[], bool],
        settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._manifests = manifests
        self._blobs = blobs
        self._walks = walks
        self._usage = usage
        self._clock = clock
        self._pin_on_push = pin_on_push
        #: Waits for the commits of cached manifests still in flight, so a
        #: push or a delete is never overtaken by one (commits.py).
        self._settled = settled

    async def blob(self, digest: Digest, data: bytes | AsyncIterable[bytes]) -> Descriptor:
        """Ingest ``data`` (bytes, or an async iterable of bytes) verified against ``digest``."""
        size: int | None = None
        if isinstance(data, (bytes, bytearray, memoryview)):
            size, chunks = len(data), _pieces(memoryview(data))
        else:
            chunks = coalesce(_checked(data))
        await self._usage.pushed_blob(digest)  # before the ingest: never taken for a cache
        async with self._blobs.ingest(digest, size) as writer, aclosing(chunks):
            async for chunk in chunks:
                await writer.write(chunk)
            return await writer.commit()

    async def manifest(
        self, repository: str, manifest: Manifest, ref: Digest | str | None
    ) -> Descriptor:
        """Store ``manifest`` once all it references resolves; tag it when ``ref`` is a tag.

        A ``ref`` that is a digest of another algorithm than the manifest's
        own makes the manifest retrievable by it too.
        """
        missing = await self._walks.missing(repository, manifest, pin=self._pin_on_push())
        if missing:
            raise ManifestBlobUnknown(
                f"manifest {manifest.digest} references content that resolves nowhere: "
                + ", ".join(str(d.digest) for d in missing),
                missing=missing,
                repository=repository,
                digest=manifest.digest,
            )
        await self._settle()
        await self._usage.pushed_manifest(repository, manifest.digest)
        await self._manifests.put_manifest(repository, manifest)
        if isinstance(ref, Digest) and ref != manifest.digest:
            await self._usage.pushed_manifest(repository, ref)
            await self._manifests.put_manifest(repository, attrs.evolve(manifest, digest=ref))
        if isinstance(ref, str):
            record = TagRecord(manifest.digest, manifest.media_type, self._clock())
            await self._manifests.set_tag(repository, ref, record)
        return manifest.descriptor()

    async def delete_manifest(self, repository: str, ref: Digest | str) -> None:
        """Delete a tag, or a manifest by digest with every tag naming it."""
        await self._settle()
        store = self._manifests
        if isinstance(ref, str):
            if not await store.delete_tag(repository, ref):
                raise ManifestUnknown(
                    f"tag {repository}:{ref} is not held here", repository=repository
                )
            return
        if await store.get_manifest(repository, ref) is None:
            raise ManifestUnknown(
                f"manifest {ref} is not held here", repository=repository, digest=ref
            )
        for tag in await store.tags(repository) or []:
            record = await store.get_tag(repository, tag)
            if record is not None and record.digest == ref:
                await store.delete_tag(repository, tag)
        await store.delete_manifest(repository, ref)

    async def _settle(self) -> None:
        if self._settled is not None:
            await self._settled()


async def _pieces(view: memoryview) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


async def _checked(data: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    async for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"blob data must be bytes, not {type(chunk).__name__}")
        yield bytes(chunk)
