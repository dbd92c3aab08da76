"""What walks a manifest's references: eager caching, pushes (pin-on-push) and check()."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from _resolve_helpers import make_resolver, read_all

from dockerconnect import (
    CachingPolicy,
    Digest,
)
from dockerconnect.errors import (
    DigestMismatch,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
)
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    random_image,
    random_index,
)

pytestmark = pytest.mark.anyio


# -- eager ------------------------------------------------------------------


async def test_eager_caches_every_blob_of_an_image() -> None:
    image = random_image(seed=21, layers=4)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    async with make_resolver(counted, policy=CachingPolicy(eager=True)) as r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        for digest in image.blobs:
            assert await r.blobs.stat(digest) is not None
        assert counted.calls["open_blob"] == len(image.blobs)
        counted.reset()
        for digest in image.blobs:
            await read_all(await r.open_blob("app", digest))
        assert counted.total == 0


async def test_eager_index_limited_to_platforms() -> None:
    index = random_index(seed=22, platforms=("linux/amd64", "linux/arm64/v8", "linux/arm/v7"))
    upstream = FakeUpstream("up")
    upstream.add("app", index, tag="multi")
    policy = CachingPolicy(eager=True, platforms=("linux/arm64",))
    async with make_resolver(upstream, policy=policy) as r:
        await r.get_manifest("app", "multi")
        await r.wait_idle()
        arm64 = next(c for c in index.children if c.platform and c.platform.architecture == "arm64")
        others = [c for c in index.children if c is not arm64]
        assert await r.manifests.get_manifest("app", arm64.manifest.digest) is not None
        for digest in arm64.blobs:
            assert await r.blobs.stat(digest) is not None
        for child in others:
            assert await r.manifests.get_manifest("app", child.manifest.digest) is None
            for digest in child.blobs:
                assert await r.blobs.stat(digest) is None


async def test_eager_index_all_children() -> None:
    index = random_index(seed=23)
    upstream = FakeUpstream("up")
    upstream.add("app", index, tag="multi")
    async with make_resolver(upstream, policy=CachingPolicy(eager=True)) as r:
        await r.get_manifest("app", "multi")
        await r.wait_idle()
        for digest in index.blobs:
            assert await r.blobs.stat(digest) is not None
        report = await r.check("app", "multi")
        assert report.ok
        assert {e.location for e in report.entries} == {"local"}


# -- writes and check -------------------------------------------------------


async def test_push_with_layers_behind_connector_then_connector_removed_dangles() -> None:
    base = random_image(seed=24, layers=2)
    release = FakeUpstream("release")
    release.add("app", base, tag="base")
    async with make_resolver(release, name="prerelease") as r:
        await r.push_manifest(
            "app", base.manifest.data, media_type=base.manifest.media_type, tag="v1"
        )
        report = await r.check("app", "v1")
        assert report.ok
        assert {e.location for e in report.entries} == {"release"}
        assert len(report.entries) == 3
        r.connectors.remove(release)
        report = await r.check("app", "v1")
        assert not report.ok
        assert {d.digest for d in report.missing} == set(base.blobs)


async def test_push_with_missing_blobs_is_refused() -> None:
    image = random_image(seed=25)
    async with make_resolver(FakeUpstream("up")) as r:
        with pytest.raises(ManifestBlobUnknown) as info:
            await r.push_manifest("app", image.manifest.data, media_type=image.manifest.media_type)
        assert {d.digest for d in info.value.missing} == set(image.blobs)
        assert await r.manifests.get_manifest("app", image.manifest.digest) is None


async def test_pin_on_push_copies_everything_so_nothing_dangles() -> None:
    index = random_index(seed=26)
    release = FakeUpstream("release")
    release.add("app", index)
    async with make_resolver(release, policy=CachingPolicy(pin_on_push=True)) as r:
        await r.push_manifest(
            "app", index.manifest.data, media_type=index.manifest.media_type, tag="v1"
        )
        r.connectors.clear()
        report = await r.check("app", "v1")
        assert report.ok
        assert len(report.entries) == len(index.children) + len(index.blobs)


async def test_push_manifest_validates() -> None:
    async with make_resolver() as r:
        with pytest.raises(ManifestInvalid):
            await r.push_manifest(
                "app", b"not json", media_type="application/vnd.oci.image.manifest.v1+json"
            )
        image = random_image(seed=27)
        with pytest.raises(ManifestInvalid):
            await r.push_manifest(
                "app", image.manifest.data, media_type="application/vnd.oci.image.index.v1+json"
            )


async def test_push_blob_stream_verified() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 1000

    data = b"".join(bytes([i]) * 1000 for i in range(10))
    async with make_resolver() as r:
        d = await r.push_blob("app", chunks(), digest=Digest.from_bytes(data))
        assert d.size == len(data)
        with pytest.raises(DigestMismatch):
            await r.push_blob("app", chunks(), digest=Digest.from_bytes(b"other"))
        assert await r.blobs.stat(Digest.from_bytes(b"other")) is None


async def test_delete_manifest_by_tag_and_digest() -> None:
    image = random_image(seed=28)
    async with make_resolver() as r:
        for digest, data in image.blobs.items():
            await r.push_blob("app", data, digest=digest)
        await r.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="a"
        )
        await r.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="b"
        )
        await r.delete_manifest("app", "a")
        assert await r.tags("app") == ["b"]
        await r.delete_manifest("app", str(image.manifest.digest))
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", "b")
        with pytest.raises(ManifestUnknown):
            await r.delete_manifest("app", "b")
