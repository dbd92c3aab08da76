"""Blobs: stream-through, the shared flight, verification, resume, replay."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from _resolve_helpers import make_resolver, read_all

from dockerconnect import (
    CachingPolicy,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect.errors import (
    BlobUnknown,
    DigestMismatch,
    RangeInvalid,
    UpstreamError,
)
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    random_blob,
    random_image,
)

pytestmark = pytest.mark.anyio


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
