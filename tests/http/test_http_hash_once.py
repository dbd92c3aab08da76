"""Every blob byte through HttpConnector is hashed once, under a Resolver or alone.

Counts what every ``hashlib`` object was fed (a counting wrapper around
``hashlib.new``); before ``BlobStream.defer_verification`` a Resolver over an
HttpConnector with the default ``verify_blobs=True`` hashed each byte twice.
"""

from __future__ import annotations

import pytest
from _http_fakes import REGISTRY, Upstream

from dockerconnect import CachingPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.http import HttpConnector
from dockerconnect.testing import random_image

pytestmark = pytest.mark.anyio

REPO = "team/app"


def blob_upstream() -> tuple[Upstream, str, bytes]:
    upstream = Upstream()
    img = random_image(layers=1, layer_size=3 * 1024 * 1024 + 5, seed=7, layer_format="raw")
    upstream.add(REPO, img)
    return upstream, str(img.manifest.layers[0].digest), img.layers[0]


@pytest.mark.parametrize("cache_blobs", [True, False], ids=["caching", "relaying"])
async def test_each_byte_is_hashed_once_under_a_resolver(
    hashed: list[int], cache_blobs: bool
) -> None:
    upstream, digest, data = blob_upstream()
    async with (
        HttpConnector(REGISTRY, transport=upstream.transport(), name="up") as connector,
        Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=MemoryBlobStore(),
            connectors=[connector],
            policy=CachingPolicy(cache_blobs=cache_blobs),
        ) as resolver,
    ):
        assert connector.verify_blobs  # the default: it would hash on its own
        hashed[0] = 0
        stream = await resolver.open_blob(REPO, digest)
        assert await stream.read() == data
    assert hashed[0] == len(data)


async def test_alone_the_connector_hashes_each_byte_once(hashed: list[int]) -> None:
    upstream, digest, data = blob_upstream()
    hashed[0] = 0
    async with HttpConnector(REGISTRY, transport=upstream.transport()) as connector:
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        assert await stream.read() == data
    assert hashed[0] == len(data)
