"""The connector conformance suite, run on the in-process connectors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest

from dockerconnect import MemoryBlobStore, MemoryManifestStore, RegistryConnector, Resolver
from dockerconnect.testing import (
    ConnectorConformance,
    ConnectorFactory,
    FakeUpstream,
    RandomImage,
    RandomIndex,
)


class TestFakeUpstream(ConnectorConformance):
    @pytest.fixture
    def connector_factory(self) -> ConnectorFactory:
        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> FakeUpstream:
            upstream = FakeUpstream("fake")
            for tag, content in images.items():
                upstream.add(repository, content, tag=tag)
            return upstream

        return make


class TestRegistryConnector(ConnectorConformance):
    @pytest.fixture
    async def connector_factory(self) -> AsyncIterator[ConnectorFactory]:
        async with Resolver(
            "release", manifests=MemoryManifestStore(), blobs=MemoryBlobStore()
        ) as release:

            async def make(
                repository: str, images: Mapping[str, RandomImage | RandomIndex]
            ) -> RegistryConnector:
                for tag, content in images.items():
                    for digest, data in content.blobs.items():
                        await release.push_blob(repository, data, digest=digest)
                    for manifest in content.manifests.values():
                        if manifest is not content.manifest:
                            await release.push_manifest(
                                repository, manifest.data, media_type=manifest.media_type
                            )
                    await release.push_manifest(
                        repository,
                        content.manifest.data,
                        media_type=content.manifest.media_type,
                        tag=tag,
                    )
                return RegistryConnector(release)

            yield make


class TestResolverBehindRegistryConnector(ConnectorConformance):
    """A Resolver that itself pulls through a fake upstream, seen as a connector."""

    @pytest.fixture
    async def connector_factory(self) -> AsyncIterator[ConnectorFactory]:
        upstream = FakeUpstream("origin")
        async with Resolver(
            "middle",
            manifests=MemoryManifestStore(),
            blobs=MemoryBlobStore(),
            connectors=[upstream],
        ) as middle:

            async def make(
                repository: str, images: Mapping[str, RandomImage | RandomIndex]
            ) -> RegistryConnector:
                for tag, content in images.items():
                    upstream.add(repository, content, tag=tag)
                return RegistryConnector(middle, name="middle")

            yield make
