"""Manifests by digest and by tag: verification, freshness, revalidation, misses."""

from __future__ import annotations

import anyio
import pytest
from _resolve_helpers import Clock, make_resolver

from dockerconnect import (
    CachingPolicy,
    Digest,
)
from dockerconnect.errors import (
    ManifestUnknown,
    TooManyRequests,
    UpstreamError,
)
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    random_image,
)

pytestmark = pytest.mark.anyio


# -- manifests by digest ----------------------------------------------------


async def test_manifest_by_digest_verified_and_wrong_bytes_skipped() -> None:
    image = random_image(seed=7)
    bad, good = FakeUpstream("bad"), FakeUpstream("good")
    bad.add("app", image)
    bad.faults.corrupt_manifests = True
    good.add("app", image)
    async with make_resolver(bad, good) as r:
        manifest = await r.get_manifest("app", str(image.manifest.digest))
        assert manifest.data == image.manifest.data
        assert r.stats.verification_failures == 1
        assert r.stats.hits["good"] == 1
        stored = await r.manifests.get_manifest("app", image.manifest.digest)
        assert stored is not None and stored.data == image.manifest.data


async def test_corrupt_manifest_only_source_is_an_upstream_error_not_a_miss() -> None:
    image = random_image(seed=8)
    bad = FakeUpstream("bad")
    bad.add("app", image)
    bad.faults.corrupt_manifests = True
    counted = CountingConnector(bad)
    async with make_resolver(counted) as r:
        with pytest.raises(UpstreamError) as info:
            await r.get_manifest("app", str(image.manifest.digest))
        assert not isinstance(info.value, ManifestUnknown)
        assert await r.manifests.get_manifest("app", image.manifest.digest) is None
        # Not remembered as a miss: the next request asks again.
        bad.faults.corrupt_manifests = False
        assert (await r.get_manifest("app", str(image.manifest.digest))).data == image.manifest.data
        assert counted.calls["get_manifest"] == 2


# -- tags -------------------------------------------------------------------


async def test_local_tag_is_authoritative() -> None:
    pushed = random_image(seed=9)
    upstream_image = random_image(seed=10)
    upstream = FakeUpstream("up")
    upstream.add("app", upstream_image, tag="v1")
    counted = CountingConnector(upstream)
    clock = Clock()
    async with make_resolver(counted, clock=clock) as r:
        for digest, data in pushed.blobs.items():
            await r.push_blob("app", data, digest=digest)
        await r.push_manifest(
            "app", pushed.manifest.data, media_type=pushed.manifest.media_type, tag="v1"
        )
        clock.advance(10_000)
        assert (await r.get_manifest("app", "v1")).digest == pushed.manifest.digest
        assert counted.total == 0


async def test_fresh_tag_costs_nothing_stale_tag_costs_one_head() -> None:
    image = random_image(seed=11)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    clock = Clock()
    async with make_resolver(counted, clock=clock, policy=CachingPolicy(tag_ttl=60)) as r:
        await r.get_manifest("app", "v1")
        assert counted.calls == {"get_manifest": 1}
        for _ in range(5):
            await r.get_manifest("app", "v1")
        assert counted.total == 1
        clock.advance(61)
        await r.get_manifest("app", "v1")
        assert counted.calls == {"get_manifest": 1, "head_manifest": 1}
        # Revalidated: fresh again.
        await r.get_manifest("app", "v1")
        assert counted.calls == {"get_manifest": 1, "head_manifest": 1}
        assert r.stats.revalidations == 1


async def test_stale_tag_that_moved_is_refreshed() -> None:
    old, new = random_image(seed=12), random_image(seed=13)
    upstream = FakeUpstream("up")
    upstream.add("app", old, tag="v1")
    upstream.add("app", new)
    counted = CountingConnector(upstream)
    clock = Clock()
    async with make_resolver(counted, clock=clock, policy=CachingPolicy(tag_ttl=60)) as r:
        assert (await r.get_manifest("app", "v1")).digest == old.manifest.digest
        upstream.tag("app", "v1", new.manifest.digest)
        clock.advance(61)
        assert (await r.get_manifest("app", "v1")).digest == new.manifest.digest
        assert counted.calls == {"get_manifest": 2, "head_manifest": 1}
        await r.wait_idle()  # the moved tag is made durable after it is served
        record = await r.manifests.get_tag("app", "v1")
        assert record is not None and record.digest == new.manifest.digest


async def test_stale_tag_gone_upstream_is_gone() -> None:
    image = random_image(seed=14)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    clock = Clock()
    async with make_resolver(upstream, clock=clock, policy=CachingPolicy(tag_ttl=60)) as r:
        await r.get_manifest("app", "v1")
        upstream.untag("app", "v1")
        clock.advance(61)
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", "v1")
        assert await r.manifests.get_tag("app", "v1") is None


async def test_stale_served_within_stale_if_error_then_fails() -> None:
    image = random_image(seed=15)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    clock = Clock()
    policy = CachingPolicy(tag_ttl=60, stale_if_error=100)
    async with make_resolver(upstream, clock=clock, policy=policy) as r:
        await r.get_manifest("app", "v1")
        upstream.faults.fail = True
        clock.advance(61 + 99)
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert r.stats.stale_serves == 1
        clock.advance(2)
        with pytest.raises(UpstreamError) as info:
            await r.get_manifest("app", "v1")
        assert info.value.connector == "up"


async def test_revalidation_asks_source_connector_first() -> None:
    image = random_image(seed=16)
    first, second = FakeUpstream("first"), FakeUpstream("second")
    second.add("app", image, tag="v1")
    a, b = CountingConnector(first), CountingConnector(second)
    clock = Clock()
    async with make_resolver(
        a, b, clock=clock, policy=CachingPolicy(tag_ttl=60, negative_ttl=0)
    ) as r:
        await r.get_manifest("app", "v1")
        a.reset(), b.reset()
        clock.advance(61)
        await r.get_manifest("app", "v1")
        assert b.calls == {"head_manifest": 1}
        assert a.total == 0


async def test_missing_tag_costs_one_request_per_connector_and_is_remembered() -> None:
    a, b = CountingConnector(FakeUpstream("a")), CountingConnector(FakeUpstream("b"))
    clock = Clock()
    async with make_resolver(a, b, clock=clock, policy=CachingPolicy(negative_ttl=30)) as r:
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", "nope")
        assert a.calls == {"get_manifest": 1} and b.calls == {"get_manifest": 1}
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", "nope")
        assert a.total == 1 and b.total == 1
        assert r.stats.negative_hits == 2
        clock.advance(31)
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", "nope")
        assert a.total == 2 and b.total == 2


async def test_negative_ttl_override_per_connector() -> None:
    a, b = CountingConnector(FakeUpstream("a")), CountingConnector(FakeUpstream("b"))
    overrides = {"b": CachingPolicy(negative_ttl=0)}
    async with make_resolver(a, b, overrides=overrides) as r:
        for _ in range(3):
            with pytest.raises(ManifestUnknown):
                await r.get_manifest("app", "nope")
        assert a.total == 1 and b.total == 3


async def test_failures_named_when_nobody_has_it() -> None:
    down, empty = FakeUpstream("down"), FakeUpstream("empty")
    down.faults.rate_limited = 5.0
    async with make_resolver(down, empty) as r:
        with pytest.raises(TooManyRequests) as info:
            await r.get_manifest("app", "v1")
        assert info.value.connector == "down"
        down.faults.rate_limited = None
        down.faults.fail = True
        other = FakeUpstream("other")
        other.faults.fail = True
        r.connectors.append(other)
        with pytest.raises(UpstreamError) as both:
            await r.get_manifest("app", "v2")
        assert set(both.value.failures) == {"down", "other"}


async def test_concurrent_manifest_requests_share_one_upstream_call() -> None:
    image = random_image(seed=17)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        results: list[Digest] = []

        async def pull() -> None:
            results.append((await r.get_manifest("app", "v1")).digest)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(pull)
        assert results == [image.manifest.digest] * 20
        assert counted.calls == {"get_manifest": 1}


async def test_no_manifest_caching_when_policy_says_so() -> None:
    image = random_image(seed=18)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    async with make_resolver(counted, policy=CachingPolicy(cache_manifests=False)) as r:
        await r.get_manifest("app", "v1")
        await r.get_manifest("app", "v1")
        assert counted.calls["get_manifest"] == 2
        assert await r.manifests.get_manifest("app", image.manifest.digest) is None
        descriptor = await r.head_manifest("app", "v1")
        assert descriptor.digest == image.manifest.digest
        assert counted.calls["head_manifest"] == 1


async def test_head_manifest_cold_caches_so_get_by_digest_is_local() -> None:
    image = random_image(seed=19)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        descriptor = await r.head_manifest("app", "v1")
        assert descriptor.digest == image.manifest.digest
        assert descriptor.size == len(image.manifest.data)
        await r.get_manifest("app", str(descriptor.digest))
        assert counted.total == 1


async def test_expired_tag_with_no_connector_left_is_served_stale_not_deleted() -> None:
    image = random_image(seed=40)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    clock = Clock()
    async with make_resolver(upstream, clock=clock, policy=CachingPolicy(tag_ttl=60)) as r:
        await r.get_manifest("app", "v1")
        r.connectors.clear()
        clock.advance(3600)
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert r.stats.stale_serves == 1
        assert await r.manifests.get_tag("app", "v1") is not None
