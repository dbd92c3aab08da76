"""HttpConnector against the real CNCF distribution, fed by the real skopeo."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping

import anyio.to_thread
import pytest
from _token_server import TokenServer

from dockerconnect._protocols import Connector
from dockerconnect.errors import Unauthorized
from dockerconnect.http import HttpConnector
from dockerconnect.testing import (
    ConnectorConformance,
    ConnectorFactory,
    DistributionRegistry,
    RandomImage,
    RandomIndex,
    push_content,
    random_image,
    random_index,
    skopeo_push,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ALICE = ("alice", "wonderland")


def _name(prefix: str) -> str:
    return f"{prefix}/r{uuid.uuid4().hex[:10]}"


async def _skopeo(
    registry: DistributionRegistry,
    repository: str,
    content: RandomImage | RandomIndex,
    tag: str,
    credentials: tuple[str, str] | None = None,
) -> None:
    await anyio.to_thread.run_sync(
        lambda: skopeo_push(registry.address, repository, content, tag=tag, credentials=credentials)
    )


async def _pull_everything(
    connector: HttpConnector, repository: str, content: RandomImage | RandomIndex, tag: str
) -> None:
    """Pull ``content`` through ``connector`` and check every byte and digest."""
    top = await connector.get_manifest(repository, tag)
    assert top is not None
    assert top.data == content.manifest.data  # skopeo --preserve-digests kept the bytes
    head = await connector.head_manifest(repository, tag)
    assert head is not None
    assert head.digest == content.manifest.digest
    for digest, manifest in content.manifests.items():
        got = await connector.get_manifest(repository, str(digest))
        assert got is not None
        assert got.data == manifest.data
    for digest, data in content.blobs.items():
        found = await connector.stat_blob(repository, digest)
        assert found is not None
        assert found.size == len(data)
        stream = await connector.open_blob(repository, digest)
        assert stream is not None
        assert stream.source == connector.name
        assert await stream.read() == data
        tail = await connector.open_blob(repository, digest, offset=len(data) // 2)
        assert tail is not None
        assert await tail.read() == data[len(data) // 2 :]


async def test_image_and_index_pushed_with_skopeo(registry: DistributionRegistry) -> None:
    repository = _name("e2e")
    img = random_image(layers=3, layer_size=[2_500_000, 70_000, 10], seed=40, layer_format="raw")
    index = random_index(seed=41, platforms=("linux/amd64", "linux/arm64/v8", "linux/s390x"))
    await _skopeo(registry, repository, img, "img")
    await _skopeo(registry, repository, index, "multi")
    async with HttpConnector(registry.url, name="distribution") as connector:
        await _pull_everything(connector, repository, img, "img")
        await _pull_everything(connector, repository, index, "multi")
        assert await connector.tags(repository) == ["img", "multi"]
        catalog = await connector.repositories()
        assert catalog is not None
        assert repository in catalog
        assert await connector.ping() >= 0
        assert await connector.get_manifest(repository, "absent") is None
        assert await connector.get_manifest(_name("none"), "v1") is None
        assert await connector.tags(_name("none")) == []
    assert "dockerconnect/" in registry.log_text()  # the access log saw our requests


async def test_prefix_mapping_against_real_registry(registry: DistributionRegistry) -> None:
    repository = _name("mapped")
    img = random_image(seed=42)
    await _skopeo(registry, repository, img, "v1")
    async with HttpConnector(registry.url, prefix="up", name="up") as connector:
        got = await connector.get_manifest(f"up/{repository}", "v1")
        assert got is not None
        assert got.digest == img.manifest.digest
        assert await connector.get_manifest(repository, "v1") is None  # not served
        catalog = await connector.repositories()
        assert catalog is not None
        assert f"up/{repository}" in catalog


async def test_basic_auth_registry(basic_registry: DistributionRegistry) -> None:
    repository = _name("basic")
    img = random_image(seed=43, layer_size=200_000, layer_format="raw")
    await _skopeo(basic_registry, repository, img, "v1", credentials=ALICE)
    async with HttpConnector(basic_registry.url, credentials=ALICE) as connector:
        await _pull_everything(connector, repository, img, "v1")
        catalog = await connector.repositories()
        assert catalog is not None
        assert repository in catalog
    async with HttpConnector(basic_registry.url) as anonymous:
        with pytest.raises(Unauthorized):
            await anonymous.get_manifest(repository, "v1")
        assert await anonymous.repositories() is None
    async with HttpConnector(basic_registry.url, credentials=("alice", "wrong")) as wrong:
        with pytest.raises(Unauthorized):
            await wrong.head_manifest(repository, "v1")


async def test_token_auth_registry(
    token_registry: DistributionRegistry, token_server: TokenServer
) -> None:
    repository = _name("token")
    img = random_image(seed=44, layer_size=300_000, layer_format="raw")
    await _skopeo(token_registry, repository, img, "v1", credentials=ALICE)
    before = len(token_server.requests)
    async with HttpConnector(token_registry.url) as anonymous:
        await _pull_everything(anonymous, repository, img, "v1")
        # The whole pull needed one token: the scope's token is cached.
        asked = token_server.requests[before:]
        assert len(asked) == 1
        assert asked[0]["user"] is None
        assert asked[0]["query"]["scope"] == [f"repository:{repository}:pull"]
        assert asked[0]["query"]["service"] == [token_server.service]
        # Anonymous users get no catalog scope: the registry refuses, and that is "no catalog".
        assert await anonymous.repositories() is None
    async with HttpConnector(token_registry.url, credentials=ALICE) as alice:
        catalog = await alice.repositories()
        assert catalog is not None
        assert repository in catalog
        assert token_server.requests[-1]["user"] == "alice"
        assert await alice.tags(repository) == ["v1"]
    async with HttpConnector(token_registry.url, credentials=("alice", "bad")) as wrong:
        with pytest.raises(Unauthorized):
            await wrong.get_manifest(repository, "v1")


class TestDistributionConformance(ConnectorConformance):
    """The connector conformance suite, against the real distribution registry."""

    pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

    @pytest.fixture
    async def connector_factory(  # type: ignore[override]
        self, registry: DistributionRegistry
    ) -> AsyncIterator[ConnectorFactory]:
        made: list[HttpConnector] = []

        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> Connector:
            for tag, content in images.items():
                await push_content(registry.url, repository, content, tags=[tag])
            connector = HttpConnector(registry.url, name="distribution")
            made.append(connector)
            return connector

        yield make
        for connector in made:
            await connector.aclose()


async def test_referrers_without_an_api_is_none(registry: DistributionRegistry) -> None:
    # Debian's docker-registry (distribution 2.x) has no referrers API: the
    # caller is told to fall back to the tag schema, not "no referrers".
    repository = _name("referrers")
    img = random_image(seed=44)
    await _skopeo(registry, repository, img, "v1")
    async with HttpConnector(registry.url) as connector:
        assert await connector.referrers(repository, img.manifest.digest) is None
