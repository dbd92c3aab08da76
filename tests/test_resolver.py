"""The Resolver's rules, each shown with counting fake connectors and an injected clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from dockerconnect import (
    CachingPolicy,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    RegistryConnector,
    Resolver,
)
from dockerconnect.errors import (
    BlobUnknown,
    DigestInvalid,
    DigestMismatch,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    PaginationInvalid,
    RangeInvalid,
    ResolverClosed,
    TagInvalid,
    TooManyRequests,
    Unsupported,
    UpstreamError,
)
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    random_blob,
    random_image,
    random_index,
)

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_resolver(
    *connectors: CountingConnector | FakeUpstream | RegistryConnector,
    name: str = "local",
    clock: Clock | None = None,
    **kwargs: object,
) -> Resolver:
    return Resolver(
        name,
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


async def read_all(stream: object) -> bytes:
    async with stream as s:  # type: ignore[attr-defined]
        return b"".join([chunk async for chunk in s])


# -- resolution order -------------------------------------------------------


async def test_local_first_then_connectors_in_order() -> None:
    image = random_image(seed=1)
    first, second = FakeUpstream("first"), FakeUpstream("second")
    second.add("app", image, tag="v1")
    a, b = CountingConnector(first), CountingConnector(second)
    async with make_resolver(a, b) as r:
        manifest = await r.get_manifest("app", "v1")
        assert manifest.data == image.manifest.data
        assert a.calls["get_manifest"] == 1 and b.calls["get_manifest"] == 1
        first.add("app", random_image(seed=2), tag="v1")
        # Cached and fresh: nobody is asked again, even though "first" now has it.
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert a.total == 1 and b.total == 1
        assert r.stats.hits["second"] == 1 and r.stats.hits["local"] == 1


async def test_first_hit_wins_and_later_connectors_are_not_asked() -> None:
    image = random_image(seed=3)
    first, second = FakeUpstream("first"), FakeUpstream("second")
    first.add("app", image, tag="v1")
    second.add("app", random_image(seed=4), tag="v1")
    b = CountingConnector(second)
    async with make_resolver(first, b) as r:
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert b.total == 0


async def test_connector_only_asked_for_repositories_it_serves() -> None:
    image = random_image(seed=5)
    hub = FakeUpstream("hub", include=("library/*",))
    hub.add("other/app", image, tag="v1")
    counted = CountingConnector(hub)
    async with make_resolver(counted) as r:
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("other/app", "v1")
        assert counted.total == 0


async def test_connectors_list_changes_are_seen_by_next_request() -> None:
    image = random_image(seed=6)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    async with make_resolver() as r:
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", image.manifest.digest.__str__())
        r.connectors.append(upstream)
        assert (await r.get_manifest("app", str(image.manifest.digest))).data == image.manifest.data


async def test_invalid_input_rejected_before_any_io() -> None:
    upstream = CountingConnector(FakeUpstream("up"))
    async with make_resolver(upstream) as r:
        with pytest.raises(NameInvalid):
            await r.get_manifest("../etc", "latest")
        with pytest.raises(NameInvalid):
            await r.open_blob("UPPER", "sha256:" + "a" * 64)
        with pytest.raises(TagInvalid):
            await r.get_manifest("app", "bad/tag")
        with pytest.raises(DigestInvalid):
            await r.get_manifest("app", "sha256:short")
        with pytest.raises(DigestInvalid):
            await r.stat_blob("app", "sha256:" + "A" * 64)
        with pytest.raises(PaginationInvalid):
            await r.tags("app", n=-1)
    assert upstream.total == 0


async def test_closed_resolver_refuses_calls() -> None:
    r = make_resolver()
    with pytest.raises(ResolverClosed):
        await r.get_manifest("app", "latest")
    async with r:
        pass
    with pytest.raises(ResolverClosed):
        await r.open_blob("app", "sha256:" + "a" * 64)


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


# -- blobs ------------------------------------------------------------------


async def test_blob_streams_through_and_is_cached() -> None:
    data = random_blob(3 * 1024 * 1024 + 17, 1)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        stream = await r.open_blob("app", digest)
        assert stream.source == "up" and stream.size == len(data)
        assert await read_all(stream) == data
        second = await r.open_blob("app", str(digest))
        assert second.source == "local"
        assert await read_all(second) == data
        assert counted.calls == {"open_blob": 1}
        assert r.stats.bytes_from_upstream["up"] == len(data)
        assert r.stats.bytes_served == 2 * len(data)


async def test_blob_offset_reads_from_cache_and_from_flight() -> None:
    data = random_blob(1024 * 1024, 2)
    upstream = FakeUpstream("up", chunk_size=4096)
    digest = upstream.add_blob("app", data)
    upstream.faults.gate = anyio.Event()
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        got: dict[str, bytes] = {}

        async def read_from(name: str, offset: int) -> None:
            stream = await r.open_blob("app", digest, offset=offset)
            assert stream.size == len(data) and stream.offset == offset
            got[name] = await read_all(stream)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_from, "first", 0)
            tg.start_soon(read_from, "middle", 1000)
            await anyio.sleep(0.01)
            upstream.faults.gate.set()
        assert got == {"first": data, "middle": data[1000:]}
        end = await r.open_blob("app", digest, offset=len(data))
        assert await read_all(end) == b""
        with pytest.raises(RangeInvalid):
            await r.open_blob("app", digest, offset=len(data) + 1)
        assert counted.calls == {"open_blob": 1}


async def test_stat_blob_through_connectors() -> None:
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", b"hello")
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        descriptor = await r.stat_blob("app", digest)
        assert descriptor.size == 5
        with pytest.raises(BlobUnknown):
            await r.stat_blob("app", Digest.from_bytes(b"nope"))
        assert counted.calls == {"stat_blob": 2}


async def test_hundred_concurrent_pulls_of_cold_64mib_blob_one_fetch() -> None:
    data = random_blob(64 * 1024 * 1024, 3)
    upstream = FakeUpstream("up", chunk_size=1024 * 1024)
    digest = upstream.add_blob("app", data)
    upstream.faults.gate = anyio.Event()
    counted = CountingConnector(upstream)
    expected = Digest.from_bytes(data)
    ok: list[bool] = []
    async with make_resolver(counted) as r:

        async def pull() -> None:
            stream = await r.open_blob("app", digest)
            h = expected.hasher()
            n = 0
            async with stream:
                async for chunk in stream:
                    h.update(chunk)
                    n += len(chunk)
            ok.append(h.hexdigest() == expected.hex and n == len(data))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(pull)
            await anyio.sleep(0.05)
            upstream.faults.gate.set()
        assert ok == [True] * 100
        assert counted.calls == {"open_blob": 1}
        assert counted.bytes_sent == len(data)
        assert r.stats.joined_waiters == 99
        assert await r.blobs.stat(digest) is not None


async def test_late_joiner_replays_then_follows_live() -> None:
    data = random_blob(512 * 1024, 4)
    upstream = FakeUpstream("up", chunk_size=16 * 1024)
    digest = upstream.add_blob("app", data)
    upstream.faults.delay = 0.001
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        first = await r.open_blob("app", digest)
        got = bytearray()
        async with first:
            async for chunk in first:
                got += chunk
                if len(got) > len(data) // 2:
                    break
        late = await r.open_blob("app", digest)
        assert await read_all(late) == data
        assert counted.calls == {"open_blob": 1}


async def test_corrupt_upstream_errors_to_client_and_caches_nothing() -> None:
    data = random_blob(3 * 1024 * 1024, 5)
    bad = FakeUpstream("bad")
    digest = bad.add_blob("app", data)
    bad.faults.corrupt_blobs = True
    async with make_resolver(bad) as r:
        stream = await r.open_blob("app", digest)
        received = bytearray()
        with pytest.raises(DigestMismatch):
            async with stream:
                async for chunk in stream:
                    received += chunk
        # The last byte is never released: the client never holds a "complete" wrong blob.
        assert len(received) < len(data)
        assert await r.blobs.stat(digest) is None
        assert r.stats.verification_failures == 1
        # Not remembered as a miss: a failure, reported as one, and once the
        # upstream recovers the next request is served and cached.
        with pytest.raises(UpstreamError) as info:
            await read_all(await r.open_blob("app", digest))
        assert not isinstance(info.value, BlobUnknown)
        bad.faults.corrupt_blobs = False
        assert await read_all(await r.open_blob("app", digest)) == data
        assert await r.blobs.stat(digest) is not None


async def test_small_corrupt_blob_never_reaches_a_reader() -> None:
    data = random_blob(256 * 1024, 5)
    bad = FakeUpstream("bad")
    digest = bad.add_blob("app", data)
    bad.faults.corrupt_blobs = True
    async with make_resolver(bad) as r:
        with pytest.raises(DigestMismatch) as info:
            await r.open_blob("app", digest)
        assert isinstance(info.value, UpstreamError) and info.value.connector == "bad"
        assert await r.blobs.stat(digest) is None


async def test_broken_transfer_resumes_from_where_it_stopped() -> None:
    data = random_blob(1024 * 1024, 7)
    upstream = FakeUpstream("up", chunk_size=32 * 1024)
    digest = upstream.add_blob("app", data)
    upstream.faults.truncate_after = 300_000
    upstream.faults.truncations = 2
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        assert counted.calls == {"open_blob": 3}
        assert counted.bytes_sent == len(data)
        assert r.stats.resumes == 2
        assert await r.blobs.stat(digest) is not None


async def test_cancelled_client_does_not_cancel_fetch_or_cache() -> None:
    data = random_blob(2 * 1024 * 1024, 8)
    upstream = FakeUpstream("up", chunk_size=64 * 1024)
    digest = upstream.add_blob("app", data)
    upstream.faults.delay = 0.0005
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        results: list[bytes] = []

        async def quitter() -> None:
            stream = await r.open_blob("app", digest)
            with anyio.CancelScope() as disconnect:
                async with stream:
                    async for _ in stream:
                        disconnect.cancel()  # the client goes away mid-transfer
                        await anyio.sleep(1)
            assert disconnect.cancelled_caught

        async def stayer() -> None:
            results.append(await read_all(await r.open_blob("app", digest)))

        with anyio.fail_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(quitter)
                tg.start_soon(stayer)
        assert not scope.cancel_called
        assert results == [data]
        await r.wait_idle()
        assert await r.blobs.stat(digest) is not None
        assert counted.calls == {"open_blob": 1}


async def test_reader_that_goes_away_does_not_stop_caching() -> None:
    data = random_blob(1024 * 1024, 9)
    upstream = FakeUpstream("up", chunk_size=64 * 1024)
    digest = upstream.add_blob("app", data)
    async with make_resolver(upstream) as r:
        stream = await r.open_blob("app", digest)
        with anyio.move_on_after(0.001):
            async with stream:
                async for _ in stream:
                    await anyio.sleep(1)
        await r.wait_idle()
        local = await r.blobs.open(digest)
        assert local is not None and await read_all(local) == data


async def test_max_blob_size_streams_without_caching_but_still_verifies() -> None:
    data = random_blob(200_000, 10)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    async with make_resolver(counted, policy=CachingPolicy(max_blob_size=100_000)) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        await r.wait_idle()
        assert await r.blobs.stat(digest) is None
        assert await read_all(await r.open_blob("app", digest)) == data
        assert counted.calls == {"open_blob": 2}


async def test_cache_blobs_false_per_connector_override() -> None:
    data = b"x" * 1000
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    async with make_resolver(upstream, overrides={"up": CachingPolicy(cache_blobs=False)}) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        await r.wait_idle()
        assert await r.blobs.stat(digest) is None


async def test_blob_missing_everywhere() -> None:
    async with make_resolver(FakeUpstream("up")) as r:
        with pytest.raises(BlobUnknown):
            await r.open_blob("app", Digest.from_bytes(b"nothing"))


async def test_blobs_are_shared_across_repositories() -> None:
    async with make_resolver() as r:
        digest = Digest.from_bytes(b"shared")
        await r.push_blob("one", b"shared", digest=digest)
        assert await read_all(await r.open_blob("two", digest)) == b"shared"


# -- filesystem end to end ------------------------------------------------


async def test_stream_through_into_filesystem_store(tmp_path: Path) -> None:
    image = random_image(seed=20, layers=3, layer_size=300_000, layer_format="raw")
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    async with Resolver(
        "local",
        manifests=FilesystemManifestStore(tmp_path / "m"),
        blobs=FilesystemBlobStore(tmp_path / "b"),
        connectors=[counted],
    ) as r:
        manifest = await r.get_manifest("app", "v1")
        for layer in manifest.blobs():
            assert (
                await read_all(await r.open_blob("app", layer.digest)) == image.blobs[layer.digest]
            )
    counted.reset()
    async with Resolver(
        "local",
        manifests=FilesystemManifestStore(tmp_path / "m"),
        blobs=FilesystemBlobStore(tmp_path / "b"),
        connectors=[counted],
    ) as r:
        manifest = await r.get_manifest("app", str(image.manifest.digest))
        for layer in manifest.blobs():
            assert (
                await read_all(await r.open_blob("app", layer.digest)) == image.blobs[layer.digest]
            )
        assert counted.total == 0


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


# -- listing ----------------------------------------------------------------


async def test_tags_merged_sorted_paginated_and_unlistable_skipped() -> None:
    a, b, hub = FakeUpstream("a"), FakeUpstream("b"), FakeUpstream("hub", can_list=False)
    a.add("app", random_image(seed=29), tag="v2")
    a.add("app", random_image(seed=30), tag="v1")
    b.add("app", random_image(seed=31), tag="v3")
    b.add("app", random_image(seed=32), tag="v1")
    async with make_resolver(a, b, hub) as r:
        assert await r.tags("app") == ["v1", "v2", "v3"]
        assert await r.tags("app", n=2) == ["v1", "v2"]
        assert await r.tags("app", last="v1") == ["v2", "v3"]
        assert await r.tags("app", n=1, last="v2") == ["v3"]
        assert r.stats.listings_skipped == 4
        with pytest.raises(NameUnknown):
            await r.tags("nobody/knows")


async def test_catalog_merged_and_no_catalog_is_skipped() -> None:
    a, hub = FakeUpstream("a"), FakeUpstream("hub", has_catalog=False)
    a.add("zeta", random_image(seed=33), tag="v1")
    a.add("alpha", random_image(seed=34), tag="v1")
    async with make_resolver(a, hub) as r:
        image = random_image(seed=35)
        for digest, data in image.blobs.items():
            await r.push_blob("mid", data, digest=digest)
        await r.push_manifest(
            "mid", image.manifest.data, media_type=image.manifest.media_type, tag="x"
        )
        assert await r.repositories() == ["alpha", "mid", "zeta"]
        assert await r.repositories(n=1, last="alpha") == ["mid"]
        assert r.stats.listings_skipped == 2


# -- registry connectors ----------------------------------------------------


async def test_registry_connector_chain_prerelease_to_release() -> None:
    image = random_image(seed=36)
    async with make_resolver(name="release") as release:
        for digest, data in image.blobs.items():
            await release.push_blob("app", data, digest=digest)
        await release.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="1.0"
        )
        async with make_resolver(RegistryConnector(release), name="prerelease") as pre:
            manifest = await pre.get_manifest("app", "1.0")
            assert manifest.digest == image.manifest.digest
            for layer in manifest.blobs():
                stream = await pre.open_blob("app", layer.digest)
                assert stream.source == "release"
                assert await read_all(stream) == image.blobs[layer.digest]
                assert (await pre.stat_blob("app", layer.digest)).size == len(
                    image.blobs[layer.digest]
                )
            assert await pre.tags("app") == ["1.0"]


async def test_connector_cycle_is_refused_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    async with make_resolver(name="a") as a, make_resolver(name="b") as b:
        a.connectors.append(RegistryConnector(b))
        b.connectors.append(RegistryConnector(a))
        with caplog.at_level(logging.INFO, logger="dockerconnect"), anyio.fail_after(5):
            with pytest.raises(ManifestUnknown):
                await a.get_manifest("app", "v1")
            with pytest.raises(BlobUnknown):
                await a.open_blob("app", Digest.from_bytes(b"x"))
        assert b.stats.cycles_refused >= 1
        assert any("loop" in m for m in caplog.messages)


async def test_concurrent_requests_into_a_cycle_do_not_deadlock() -> None:
    async with make_resolver(name="a") as a, make_resolver(name="b") as b:
        a.connectors.append(RegistryConnector(b))
        b.connectors.append(RegistryConnector(a))
        digest = Digest.from_bytes(b"nowhere")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for r in (a, b, a, b):
                    tg.start_soon(_expect_unknown, r, digest)


async def _expect_unknown(r: Resolver, digest: Digest) -> None:
    with pytest.raises((BlobUnknown, UpstreamError)):
        await r.open_blob("app", digest)


async def test_diamond_is_not_a_cycle() -> None:
    image = random_image(seed=37)
    async with make_resolver(name="d") as d:
        for digest, data in image.blobs.items():
            await d.push_blob("app", data, digest=digest)
        await d.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="v1"
        )
        async with (
            make_resolver(RegistryConnector(d), name="b") as b,
            make_resolver(RegistryConnector(d), name="c") as c,
            make_resolver(RegistryConnector(b), RegistryConnector(c), name="a") as a,
        ):
            assert (await a.get_manifest("app", "v1")).digest == image.manifest.digest
            assert a.stats.cycles_refused == 0
            assert b.stats.cycles_refused == 0 and c.stats.cycles_refused == 0


async def test_upstream_errors_pass_through_registry_connector() -> None:
    down = FakeUpstream("down")
    down.faults.rate_limited = 3.0
    async with (
        make_resolver(down, name="inner") as inner,
        make_resolver(RegistryConnector(inner), name="outer") as outer,
    ):
        with pytest.raises(TooManyRequests) as info:
            await outer.get_manifest("app", "v1")
        assert info.value.connector == "down"


class _OpenMissesOnce(MemoryBlobStore):
    """A store whose first ``open`` misses what ``stat`` then finds: the window in
    which another fetch commits the blob while this request is being set up."""

    def __init__(self) -> None:
        super().__init__()
        self.missed = False

    async def open(self, digest: Digest, *, offset: int = 0):  # type: ignore[no-untyped-def]
        if not self.missed:
            self.missed = True
            return None
        return await super().open(digest, offset=offset)


async def test_blob_committed_meanwhile_is_served_locally_without_upstream() -> None:
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", b"content")
    counted = CountingConnector(upstream)
    blobs = _OpenMissesOnce()
    async with Resolver(
        "local", manifests=MemoryManifestStore(), blobs=blobs, connectors=[counted]
    ) as r:
        await r.push_blob("app", b"content", digest=digest)
        stream = await r.open_blob("app", digest)
        assert blobs.missed
        assert stream.source == "local"
        assert await read_all(stream) == b"content"
        assert counted.total == 0


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


async def test_wrong_bytes_from_first_source_replaced_unseen_when_small() -> None:
    data = random_blob(200_000, 41)
    bad, good = FakeUpstream("bad"), FakeUpstream("good")
    digest = bad.add_blob("app", data)
    good.add_blob("app", data)
    bad.faults.corrupt_blobs = True
    async with make_resolver(bad, good) as r:
        stream = await r.open_blob("app", digest)
        assert stream.source == "good"
        assert await read_all(stream) == data
        assert r.stats.verification_failures == 1
        assert await r.blobs.stat(digest) is not None


async def test_wrong_bytes_after_readers_started_fail_the_readers() -> None:
    data = random_blob(3 * 1024 * 1024, 42)
    bad, good = FakeUpstream("bad"), FakeUpstream("good")
    digest = bad.add_blob("app", data)
    good.add_blob("app", data)
    bad.faults.corrupt_blobs = True  # the first byte is wrong: readers already hold it
    async with make_resolver(bad, good) as r:
        with pytest.raises(DigestMismatch):
            await read_all(await r.open_blob("app", digest))
        assert await r.blobs.stat(digest) is None
        stream = await r.open_blob("app", digest)
        assert stream.source == "good" and await read_all(stream) == data


def _stores(kind: str, tmp_path: Path) -> dict[str, object]:
    if kind == "memory":
        return {"manifests": MemoryManifestStore(), "blobs": MemoryBlobStore()}
    return {
        "manifests": FilesystemManifestStore(tmp_path / "m"),
        "blobs": FilesystemBlobStore(tmp_path / "b"),
    }


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
async def test_reader_far_behind_replays_from_the_cache_writer(kind: str, tmp_path: Path) -> None:
    data = random_blob(24 * 1024 * 1024, 43)
    upstream = FakeUpstream("up", chunk_size=1024 * 1024)
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    async with Resolver(
        "local", connectors=[counted], spool_dir=str(tmp_path), **_stores(kind, tmp_path)
    ) as r:  # type: ignore[arg-type]
        first = await r.open_blob("app", digest)
        got = bytearray()
        late: bytes | None = None
        async with first:
            async for chunk in first:
                got += chunk
                if late is None and len(got) >= 16 * 1024 * 1024:
                    # Far past the in-memory tail: the joiner replays written bytes.
                    late = await read_all(await r.open_blob("app", digest))
        assert bytes(got) == data and late == data
        assert counted.calls == {"open_blob": 1}
        assert r.stats.joined_waiters == 1


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
async def test_reader_still_replaying_after_commit_continues_from_the_store(
    kind: str, tmp_path: Path
) -> None:
    data = random_blob(20 * 1024 * 1024, 44)
    upstream = FakeUpstream("up", chunk_size=1024 * 1024)
    digest = upstream.add_blob("app", data)
    async with Resolver("local", connectors=[upstream], **_stores(kind, tmp_path)) as r:  # type: ignore[arg-type]
        slow = await r.open_blob("app", digest)
        got = bytearray()
        async with slow:
            async for chunk in slow:
                got += chunk
                if len(got) <= len(chunk):
                    await r.wait_idle()  # the fetch ends and commits meanwhile
                    assert await r.blobs.stat(digest) is not None
        assert bytes(got) == data
        assert slow.source == "up"


async def test_resume_from_a_source_that_ignores_range_skips_what_arrived() -> None:
    data = random_blob(3 * 1024 * 1024, 45)
    upstream = FakeUpstream("up", chunk_size=64 * 1024)
    digest = upstream.add_blob("app", data)
    upstream.faults.truncate_after = 1_500_000
    upstream.faults.truncations = 1
    upstream.faults.ignore_range = True
    counted = CountingConnector(upstream)
    async with make_resolver(counted) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        assert counted.calls == {"open_blob": 2}
        assert r.stats.resumes == 1
        assert await r.blobs.stat(digest) is not None


async def test_unverifiable_digest_algorithm_refused_before_io() -> None:
    upstream = CountingConnector(FakeUpstream("up"))
    odd = "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
    async with make_resolver(upstream) as r:
        with pytest.raises(Unsupported):
            await r.open_blob("app", odd)
        with pytest.raises(Unsupported):
            await r.get_manifest("app", odd)
        with pytest.raises(Unsupported):
            await r.stat_blob("app", odd)
    assert upstream.total == 0
