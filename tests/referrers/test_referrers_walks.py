"""Referrers in the walks: eager caching under ``eager_referrers``, and
``check(..., referrers=True)``, which only inspects. On asyncio and trio."""

from __future__ import annotations

import pytest
from _referrer_helpers import SBOM, SIG, ApiUpstream, artifact, put_tag_schema

from dockerconnect import CachingPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.errors import UpstreamError
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image, random_index

pytestmark = pytest.mark.anyio

EAGER = CachingPolicy(eager=True, eager_referrers=True)


def resolver(*connectors: object, **kwargs: object) -> Resolver:
    return Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


# -- eager referrers ------------------------------------------------------------------


async def test_eager_referrers_caches_signatures_and_sboms_with_their_blobs() -> None:
    image = random_image(seed=40)
    sbom = artifact(image.manifest, SBOM, seed=41)
    sig_of_sbom = artifact(sbom.manifest, SIG, seed=42)  # a referrer of a referrer
    upstream = ApiUpstream("api")
    upstream.add("app", image, tag="v1")
    upstream.add("app", sbom)
    upstream.add("app", sig_of_sbom)
    store, blobs = MemoryManifestStore(), MemoryBlobStore()
    r = Resolver("local", manifests=store, blobs=blobs, connectors=[upstream], policy=EAGER)
    async with r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        # Air-gapped from here on: everything came along.
        r.connectors.clear()
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        assert await r.referrers("app", sbom.manifest.digest) == [sig_of_sbom.manifest.referrer()]
        for held in (sbom, sig_of_sbom, image):
            assert await store.get_manifest("app", held.manifest.digest) is not None
            for digest in held.blobs:
                assert await blobs.stat(digest) is not None
        report = await r.check("app", "v1", referrers=True)
        assert report.ok
        assert set(report.by_location()) == {"local"}


async def test_eager_referrers_of_an_index_and_its_children_through_the_tag_schema() -> None:
    index = random_index(seed=43)
    child = next(iter(index.children)).manifest
    on_index = artifact(index.manifest, SIG, seed=44)
    on_child = artifact(child, SBOM, seed=45)
    upstream = FakeUpstream("old")  # no API: the tag schema
    upstream.add("app", index, tag="v1")
    put_tag_schema(upstream, "app", index.manifest, on_index)
    put_tag_schema(upstream, "app", child, on_child)
    counted = CountingConnector(upstream)
    async with resolver(counted, policy=EAGER) as r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        r.connectors.clear()
        assert await r.referrers("app", index.manifest.digest) == [on_index.manifest.referrer()]
        assert await r.referrers("app", child.digest) == [on_child.manifest.referrer()]
        for held in (on_index, on_child):
            for digest in held.blobs:
                assert await r.blobs.stat(digest) is not None


async def test_without_eager_referrers_none_are_cached() -> None:
    image = random_image(seed=46)
    sbom = artifact(image.manifest, SBOM, seed=47)
    upstream = ApiUpstream("api")
    upstream.add("app", image, tag="v1")
    upstream.add("app", sbom)
    async with resolver(upstream, policy=CachingPolicy(eager=True)) as r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        assert upstream.calls["referrers"] == 0
        assert await r.manifests.get_manifest("app", sbom.manifest.digest) is None


async def test_eager_referrers_survives_a_failing_listing() -> None:
    image = random_image(seed=48)

    class Failing(ApiUpstream):
        async def referrers(self, *args: object, **kwargs: object) -> None:
            raise UpstreamError("referrers are down", connector=self.name)

    upstream = Failing("api")
    upstream.add("app", image, tag="v1")
    async with resolver(upstream, policy=EAGER) as r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        # The image's own blobs were cached all the same.
        for digest in image.blobs:
            assert await r.blobs.stat(digest) is not None


# -- check(..., referrers=True) ---------------------------------------------------------


async def test_check_with_referrers_says_where_each_signature_is_and_caches_nothing() -> None:
    image = random_image(seed=50)
    sig = artifact(image.manifest, SIG, seed=51)
    upstream = ApiUpstream("api")
    upstream.add("app", sig)
    async with resolver(upstream) as r:
        for digest, data in image.blobs.items():
            await r.push_blob("app", data, digest=digest)
        await r.push_manifest("app", image.manifest.data, media_type=image.manifest.media_type)
        ref = str(image.manifest.digest)
        plain = await r.check("app", ref)
        assert {e.descriptor.digest for e in plain.entries} == set(image.blobs)
        assert upstream.calls == {}
        report = await r.check("app", ref, referrers=True)
        where = {e.descriptor.digest: e.location for e in report.entries}
        assert where[sig.manifest.digest] == "api"
        assert all(where[d] == "api" for d in sig.blobs)
        assert all(where[d] == "local" for d in image.blobs)
        assert report.ok
        # Inspected only: nothing cached, and the answer was not kept.
        assert await r.manifests.get_manifest("app", sig.manifest.digest) is None
        await r.check("app", ref, referrers=True)
        # Each check asked for the image's referrers and the signature's own.
        assert upstream.calls["referrers"] == 4
        # The signature's blob vanishes upstream: the report says so.
        upstream.remove_blob(sig.manifest.layers[0].digest)
        report = await r.check("app", ref, referrers=True)
        assert not report.ok
        assert len(report.missing) == 1
