"""A Registry with the calls the server uses when a registry has them, for a
conformance run of the server's own side.

The library's Resolver does not yet have ``referrers``, ``delete_blob`` or
manifests pushed by a ``sha512`` digest (other work adds them). This wrapper
adds the smallest honest version of each over a Resolver with memory stores,
so that ``tests/e2e/test_conformance.py`` can show that the server's half of
those endpoints passes both suites. It is a test double, not a product:
state is in memory, one process.
"""

from __future__ import annotations

from typing import Any

from dockerconnect import (
    Descriptor,
    Digest,
    Manifest,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect.asgi import create_app
from dockerconnect.errors import BlobUnknown


class FeaturedRegistry:
    def __init__(self, inner: Resolver) -> None:
        self._inner = inner
        self.name = inner.name
        self._aliases: dict[tuple[str, str], Digest] = {}  # (repo, sha512) -> sha256
        self._referrers: dict[tuple[str, str], dict[str, Descriptor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> FeaturedRegistry:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)  # type: ignore[arg-type]

    def _ref(self, repository: str, reference: str) -> str:
        return str(self._aliases.get((repository, reference), reference))

    async def get_manifest(self, repository: str, reference: str, **kwargs: Any) -> Manifest:
        return await self._inner.get_manifest(
            repository, self._ref(repository, reference), **kwargs
        )

    async def head_manifest(self, repository: str, reference: str) -> Descriptor:
        return await self._inner.head_manifest(repository, self._ref(repository, reference))

    async def check(self, repository: str, reference: str) -> Any:
        return await self._inner.check(repository, self._ref(repository, reference))

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor:
        alias = tag if tag is not None and ":" in tag else None
        descriptor = await self._inner.push_manifest(
            repository, data, media_type=media_type, tag=None if alias else tag
        )
        if alias is not None:
            self._aliases[(repository, alias)] = descriptor.digest
        manifest = Manifest.parse(data, media_type)
        if manifest.subject is not None:
            artifact_type = manifest.artifact_type or (
                manifest.config.media_type if manifest.config is not None else None
            )
            entry = Descriptor(
                manifest.media_type,
                manifest.digest,
                len(data),
                annotations=manifest.annotations,
                artifact_type=artifact_type,
            )
            key = (repository, str(manifest.subject.digest))
            self._referrers.setdefault(key, {})[str(manifest.digest)] = entry
        return descriptor

    async def delete_manifest(self, repository: str, reference: str) -> None:
        ref = self._ref(repository, reference)
        await self._inner.delete_manifest(repository, ref)
        for found in self._referrers.values():
            found.pop(ref, None)

    async def delete_blob(self, repository: str, digest: Digest | str) -> None:
        d = Digest.parse(str(digest))
        if not await self._inner.blobs.delete(d):
            raise BlobUnknown(f"blob {d} is not held here", repository=repository, digest=d)

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor]:
        found = self._referrers.get((repository, str(digest)), {}).values()
        return [d for d in found if artifact_type in (None, d.artifact_type)]


def app() -> Any:
    """The uvicorn factory: the server over a FeaturedRegistry, memory stores.

    Once the Resolver has what the double adds (``referrers``,
    ``delete_blob``; sha512 manifests came with them), it is served as it is:
    the double's sha512 aliases would only stand in the way of the real thing.
    """
    resolver = Resolver("local", manifests=MemoryManifestStore(), blobs=MemoryBlobStore())
    if all(hasattr(Resolver, name) for name in ("referrers", "delete_blob")):
        return create_app(resolver)
    return create_app(FeaturedRegistry(resolver))  # type: ignore[arg-type]
