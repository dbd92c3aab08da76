"""A Registry with ``referrers``, for a conformance run of the server's own side.

The library's Resolver does not yet have ``referrers`` (other work adds
it). This wrapper adds the smallest honest version over a Resolver with
memory stores, so that ``tests/e2e/test_conformance.py`` can show that the
server's half of the referrers endpoint passes both suites. Everything else
(blob DELETE, manifests by ``sha512`` digests) is the Resolver's own. It is
a test double, not a product: state is in memory, one process.
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


class FeaturedRegistry:
    def __init__(self, inner: Resolver) -> None:
        self._inner = inner
        self.name = inner.name
        self._referrers: dict[tuple[str, str], dict[str, Descriptor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> FeaturedRegistry:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)  # type: ignore[arg-type]

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor:
        descriptor = await self._inner.push_manifest(
            repository, data, media_type=media_type, tag=tag
        )
        manifest = Manifest.parse(data, media_type)
        if manifest.subject is not None:
            key = (repository, str(manifest.subject.digest))
            self._referrers.setdefault(key, {})[str(manifest.digest)] = manifest.referrer()
        return descriptor

    async def delete_manifest(self, repository: str, reference: str) -> None:
        await self._inner.delete_manifest(repository, reference)
        for found in self._referrers.values():
            found.pop(reference, None)

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor]:
        found = self._referrers.get((repository, str(digest)), {}).values()
        return [d for d in found if artifact_type in (None, d.artifact_type)]


def app() -> Any:
    """The uvicorn factory: the server over a FeaturedRegistry, memory stores."""
    resolver = Resolver("local", manifests=MemoryManifestStore(), blobs=MemoryBlobStore())
    return create_app(FeaturedRegistry(resolver))  # type: ignore[arg-type]
