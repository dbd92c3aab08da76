"""What a pushed manifest references must resolve with the size it declares.

Issue 11 ("also noted"): a descriptor's declared size is checked against the
blob's (or child manifest's) real size when pushing, wherever the content
is: here, behind a connector, or copied here by ``pin_on_push``. A size that
differs is ``MANIFEST_INVALID``, and nothing is stored. An index's children
may be named by ``sha512`` digests (distribution-spec conformance, sha512
data): the push resolves them like any other.
"""

from __future__ import annotations

import json
import logging

import pytest
from _resolve_helpers import make_resolver

from dockerconnect import OCI_INDEX, OCI_MANIFEST, CachingPolicy, Digest
from dockerconnect.errors import ManifestBlobUnknown, ManifestInvalid
from dockerconnect.testing import FakeUpstream, random_image

pytestmark = pytest.mark.anyio


def lying_about_the_layer(image_data: bytes, by: int) -> bytes:
    doc = json.loads(image_data)
    doc["layers"][0]["size"] += by
    return json.dumps(doc).encode()


@pytest.mark.parametrize("where", ["local", "connector", "pinned"])
async def test_a_layer_of_the_wrong_declared_size_is_manifest_invalid(where: str) -> None:
    image = random_image(seed=71)
    upstream = FakeUpstream("up")
    policy = CachingPolicy(pin_on_push=where == "pinned")
    async with make_resolver(upstream, policy=policy) as r:
        for digest, blob in image.blobs.items():
            if where == "local":
                await r.push_blob("app", blob, digest=digest)
            else:
                upstream.add_blob("app", blob)
        data = lying_about_the_layer(image.manifest.data, by=1)
        with pytest.raises(ManifestInvalid) as caught:
            await r.push_manifest("app", data, media_type=OCI_MANIFEST, tag="v1")
        assert caught.value.code == "MANIFEST_INVALID"
        assert str(image.manifest.layers[0].digest) in str(caught.value)
        assert await r.manifests.tags("app") in (None, [])
        assert await r.manifests.get_manifest("app", Digest.from_bytes(data)) is None
        # The honest manifest is accepted.
        await r.push_manifest("app", image.manifest.data, media_type=OCI_MANIFEST, tag="v1")


async def test_an_index_child_of_the_wrong_declared_size_is_manifest_invalid() -> None:
    image = random_image(seed=72)
    async with make_resolver() as r:
        for digest, blob in image.blobs.items():
            await r.push_blob("app", blob, digest=digest)
        await r.push_manifest("app", image.manifest.data, media_type=OCI_MANIFEST)
        child = {
            "mediaType": OCI_MANIFEST,
            "digest": str(image.manifest.digest),
            "size": image.manifest.size + 7,
        }
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]})
        with pytest.raises(ManifestInvalid):
            await r.push_manifest("app", index.encode(), media_type=OCI_INDEX, tag="multi")
        assert await r.manifests.get_tag("app", "multi") is None


async def test_an_index_with_sha512_children_resolves_them() -> None:
    image = random_image(seed=73)
    sha512 = Digest.from_bytes(image.manifest.data, "sha512")
    child = {"mediaType": OCI_MANIFEST, "digest": str(sha512), "size": image.manifest.size}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}).encode()
    async with make_resolver() as r:
        with pytest.raises(ManifestBlobUnknown):
            await r.push_manifest("app", index, media_type=OCI_INDEX, tag="multi")
        for digest, blob in image.blobs.items():
            await r.push_blob("app", blob, digest=digest)
        await r.push_manifest("app", image.manifest.data, media_type=OCI_MANIFEST, tag=str(sha512))
        await r.push_manifest("app", index, media_type=OCI_INDEX, tag="multi")
        got = await r.get_manifest("app", "multi")
        assert got.manifests[0].digest == sha512
        assert (await r.get_manifest("app", str(sha512))).data == image.manifest.data
        report = await r.check("app", "multi")
        assert report.ok


# -- INFO logs: cache misses and eager caching (docs/guides/server.md, "Logs") -------------


async def test_cache_misses_and_eager_progress_are_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = random_image(seed=74)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    with caplog.at_level(logging.INFO, logger="dockerconnect.resolver"):
        async with make_resolver(upstream, policy=CachingPolicy(eager=True)) as r:
            await r.get_manifest("app", "v1")
            await r.wait_idle()
            await r.get_manifest("app", "v1")  # a hit: no new line
    misses = [m.getMessage() for m in caplog.records if m.name == "dockerconnect.resolver.misses"]
    assert misses[0] == (
        f"cache miss: manifest app:v1 ({image.manifest.digest}, {image.manifest.size} bytes) "
        "from 'up'"
    )
    assert len(misses) == 1 + len(image.blobs)
    for digest, blob in image.blobs.items():
        assert f"cache miss: blob {digest} ({len(blob)} bytes) from 'up'" in misses
    eager = [m.getMessage() for m in caplog.records if m.name == "dockerconnect.resolver.eager"]
    assert eager[0] == f"eager caching app@{image.manifest.digest}: started"
    assert eager[1].startswith(
        f"eager caching app@{image.manifest.digest}: done, 0 child manifests and "
        f"{len(image.blobs)} blobs in "
    )
