"""Bugs from review (issue 10) and the hostile-input trial (issue 11), resolver side.

Each test failed before its fix. Upstreams are in-process fakes wrapped in
counting or misbehaving connectors; every test runs on asyncio and trio.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _resolve_helpers import make_resolver, read_all

from dockerconnect import (
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobStream,
    CachingPolicy,
    Descriptor,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    Manifest,
    MemoryBlobStore,
    MemoryManifestStore,
    RegistryConnector,
    Resolver,
)
from dockerconnect.errors import (
    BlobUnknown,
    DigestMismatch,
    InvalidInput,
    NameUnknown,
    UpstreamError,
)
from dockerconnect.testing import CountingConnector, FakeUpstream, random_blob, random_index

pytestmark = pytest.mark.anyio


class Plugin(CountingConnector):
    """A third-party connector: a counting wrapper whose answers a test can spoil."""

    def __init__(self, inner: FakeUpstream, *, name: str | None = None) -> None:
        super().__init__(inner, name=name)
        self.accepts: list[Sequence[str] | None] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.pause = 0.0

    async def _busy(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.pause)
        finally:
            self.in_flight -= 1

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        self.accepts.append(accept)
        await self._busy()
        return await super().get_manifest(repository, reference, accept=accept)

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        await self._busy()
        return await super().open_blob(repository, digest, offset=offset)


# -- issue 10, bug 1: registries that connect to each other, asked from both ends -----


class SlowMiss(FakeUpstream):
    """Has nothing, and takes a moment to say so: the window in which a fetch is in flight."""

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        await anyio.sleep(0.05)
        return None

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        await anyio.sleep(0.05)
        return None


async def test_two_registries_asked_at_once_from_both_ends_both_get_everything() -> None:
    # x -> (w, y) and y -> (x, z): y's client asks first, x's client right after.
    z = FakeUpstream("z")
    index = random_index(seed=11)
    z.add("app", index, tag="v1")
    eager = CachingPolicy(eager=True)
    async with (
        make_resolver(name="x", policy=eager) as x,
        make_resolver(RegistryConnector(x), z, name="y", policy=eager) as y,
    ):
        x.connectors[:] = [SlowMiss("w"), RegistryConnector(y)]
        got: dict[str, Digest] = {}

        async def client(registry: Resolver) -> None:
            got[registry.name] = (await registry.get_manifest("app", "v1")).digest

        async with anyio.create_task_group() as tg:
            tg.start_soon(client, y)
            await anyio.sleep(0.01)  # y's fetch is now inside x, asking w
            tg.start_soon(client, x)
        assert got == {"x": index.manifest.digest, "y": index.manifest.digest}
        for _ in range(3):
            await y.wait_idle()
            await x.wait_idle()
        assert len(index.blobs) == 6
        held_by_x = [d for d in index.blobs if await x.blobs.stat(d) is not None]
        assert len(held_by_x) == 6
        for digest, data in index.blobs.items():
            assert await read_all(await x.open_blob("app", digest)) == data


# -- issue 10, bug 3: push_blob with data that is not bytes -----------------------------


@pytest.mark.parametrize("data", ["text", 42, [b"a", b"b"]], ids=["str", "int", "list"])
async def test_push_blob_of_non_bytes_is_invalid_input_and_stores_nothing(data: object) -> None:
    digest = Digest.from_bytes(b"ab")
    async with make_resolver() as r:
        with pytest.raises(InvalidInput):
            await r.push_blob("app", data, digest=digest)  # type: ignore[arg-type]
        assert await r.blobs.stat(digest) is None


# -- issue 10, bug 4 and issue 11, finding 18: what a third-party plugin hands over --


class ResetOnce(Plugin):
    """Its blob stream raises ConnectionResetError (not an UpstreamError) after ``after`` bytes."""

    def __init__(self, inner: FakeUpstream, *, resets: int = 1, after: int = 100 * 1024) -> None:
        super().__init__(inner)
        self.resets = resets
        self.after = after

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        stream = await super().open_blob(repository, digest, offset=offset)
        if stream is None or self.resets <= 0:
            return stream
        self.resets -= 1
        return BlobStream(digest, stream.size, self._reset(stream), offset=stream.offset)

    async def _reset(self, stream: BlobStream) -> AsyncIterator[bytes]:
        sent = 0
        async with stream:
            async for chunk in stream:
                if sent >= self.after:
                    raise ConnectionResetError("peer reset")
                yield chunk
                sent += len(chunk)


async def test_plain_exception_from_a_plugin_stream_is_resumed() -> None:
    upstream = FakeUpstream("plugin")
    data = random_blob(300 * 1024, 1)
    digest = upstream.add_blob("app", data)
    plugin = ResetOnce(upstream)
    async with make_resolver(plugin) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        assert r.stats.resumes == 1
        assert plugin.calls["open_blob"] == 2


async def test_plain_exception_from_a_plugin_stream_every_time_is_an_upstream_error() -> None:
    upstream = FakeUpstream("plugin")
    data = random_blob(300 * 1024, 2)
    digest = upstream.add_blob("app", data)
    async with make_resolver(ResetOnce(upstream, resets=100, after=0)) as r:
        with pytest.raises(UpstreamError) as info:
            await read_all(await r.open_blob("app", digest))
        assert "plugin" in str(info.value.connector)
        assert isinstance(info.value.__cause__, ConnectionResetError) or info.value.failures
        assert await r.blobs.stat(digest) is None


class Spoiled(Plugin):
    """Answers of the wrong type, as a buggy plugin might give."""

    def __init__(self, inner: FakeUpstream, spoil: str) -> None:
        super().__init__(inner, name="buggy")
        self.spoil = spoil

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        if self.spoil == "stat":
            return "12345"  # type: ignore[return-value]
        return await super().stat_blob(repository, digest)

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        if self.spoil == "not-a-stream":
            return b"bytes, not a stream"  # type: ignore[return-value]
        stream = await super().open_blob(repository, digest, offset=offset)
        if self.spoil == "str-chunks" and stream is not None:
            return BlobStream(digest, stream.size, self._text(stream), offset=offset)
        return stream

    async def _text(self, stream: BlobStream) -> AsyncIterator[bytes]:
        async with stream:
            async for chunk in stream:
                yield chunk.decode("latin-1")  # type: ignore[misc]


@pytest.mark.parametrize("spoil", ["stat", "not-a-stream", "str-chunks"])
async def test_wrong_types_from_a_plugin_are_upstream_errors_naming_it(spoil: str) -> None:
    upstream = FakeUpstream("inner")
    data = random_blob(4096, 3)
    digest = upstream.add_blob("app", data)
    async with make_resolver(Spoiled(upstream, spoil)) as r:
        with pytest.raises(UpstreamError) as info:
            if spoil == "stat":
                await r.stat_blob("app", digest)
            else:
                await read_all(await r.open_blob("app", digest))
        assert info.value.connector == "buggy"
        assert await r.blobs.stat(digest) is None


# -- issue 10, bug 8: one manifest fetch per digest, shared by eager caching and clients --


class GatedChildren(Plugin):
    """Manifests asked for by digest wait for ``gate``."""

    def __init__(self, inner: FakeUpstream) -> None:
        super().__init__(inner)
        self.gate = anyio.Event()

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        if ":" in reference:
            await self.gate.wait()
        return await super().get_manifest(repository, reference, accept=accept)


async def test_index_child_asked_while_eager_fetches_it_costs_one_upstream_get() -> None:
    upstream = FakeUpstream("up")
    index = random_index(seed=21)
    upstream.add("app", index, tag="v1")
    gated = GatedChildren(upstream)
    async with make_resolver(gated, policy=CachingPolicy(eager=True)) as r:
        await r.get_manifest("app", "v1")
        for _ in range(50):  # eager caching starts fetching both children
            await anyio.lowlevel.checkpoint()
        child = index.manifest.manifests[0].digest
        async with anyio.create_task_group() as tg:
            got: list[Manifest] = []

            async def client() -> None:
                got.append(await r.get_manifest("app", str(child)))

            tg.start_soon(client)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            gated.gate.set()
        await r.wait_idle()
        assert got[0].digest == child
        assert gated.calls["get_manifest"] == 3  # the index and its two children, once each


# -- issue 11, finding 1: a narrow-Accept client does not change what a tag means ----------


async def test_narrow_accept_client_gets_its_platform_and_the_tag_stays_the_index() -> None:
    upstream = FakeUpstream("up")
    index = random_index(seed=31, platforms=("linux/arm64/v8", "linux/amd64"))
    upstream.add("app", index, tag="v1")
    plugin = Plugin(upstream)
    amd64 = next(d for d in index.manifest.manifests if str(d.platform) == "linux/amd64")
    async with make_resolver(plugin) as r:
        narrow = await r.get_manifest("app", "v1", accept=[OCI_MANIFEST])
        assert narrow.digest == amd64.digest
        assert narrow.media_type == OCI_MANIFEST
        # The upstream was asked with every type: the cache holds what the tag is.
        assert plugin.accepts[0] is not None
        assert set(plugin.accepts[0]) == set(MANIFEST_MEDIA_TYPES)
        record = await r.manifests.get_tag("app", "v1")
        assert record is not None and record.digest == index.manifest.digest
        # The next, index-aware client gets the index.
        wide = await r.get_manifest("app", "v1", accept=[OCI_INDEX, OCI_MANIFEST])
        assert wide.digest == index.manifest.digest
        assert (await r.get_manifest("app", "v1")).digest == index.manifest.digest
        # By digest, a manifest is served as it is, whatever the Accept.
        by_digest = await r.get_manifest("app", str(index.manifest.digest), accept=[OCI_MANIFEST])
        assert by_digest.digest == index.manifest.digest


async def test_default_platform_is_configurable() -> None:
    upstream = FakeUpstream("up")
    index = random_index(seed=32, platforms=("linux/amd64", "linux/arm64/v8"))
    upstream.add("app", index, tag="v1")
    arm = next(
        d for d in index.manifest.manifests if d.platform and d.platform.matches("linux/arm64/v8")
    )
    async with make_resolver(upstream, default_platform="linux/arm64/v8") as r:
        assert (await r.get_manifest("app", "v1", accept=[OCI_MANIFEST])).digest == arm.digest


# -- issue 11, finding 4: eager caching of a large index is bounded ---------------------


async def test_eager_caching_of_a_large_index_keeps_to_its_limit() -> None:
    upstream = FakeUpstream("up")
    platforms = [f"linux/arch{i}" for i in range(12)]
    index = random_index(seed=41, platforms=platforms, layers=1, layer_size=256)
    upstream.add("app", index, tag="v1")
    plugin = Plugin(upstream)
    plugin.pause = 0.01
    async with make_resolver(plugin, policy=CachingPolicy(eager=True)) as r:
        await r.get_manifest("app", "v1")
        await r.wait_idle()
        assert plugin.calls["get_manifest"] == 13
        assert all([await r.blobs.stat(d) is not None for d in index.blobs])
    assert plugin.most_in_flight <= 4


# -- issue 11, finding 5: a range of a cold blob is never served unverified ----------------


class FlipsOneByte(Plugin):
    """Sends the blob with one byte flipped at ``at``."""

    def __init__(self, inner: FakeUpstream, at: int) -> None:
        super().__init__(inner, name="flipper")
        self.at = at

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        stream = await super().open_blob(repository, digest, offset=offset)
        if stream is None:
            return None
        return BlobStream(digest, stream.size, self._flip(stream), offset=stream.offset)

    async def _flip(self, stream: BlobStream) -> AsyncIterator[bytes]:
        pos = stream.offset
        async with stream:
            async for chunk in stream:
                if pos <= self.at < pos + len(chunk):
                    i = self.at - pos
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                pos += len(chunk)
                yield chunk


@pytest.mark.parametrize(("offset", "length"), [(0, 1024), (1024 * 1024, 1024), (100, None)])
async def test_range_of_a_cold_corrupt_blob_serves_no_byte(offset: int, length: int | None) -> None:
    upstream = FakeUpstream("up")
    data = random_blob(4 * 1024 * 1024, 5)
    digest = upstream.add_blob("app", data)
    async with make_resolver(FlipsOneByte(upstream, at=3 * 1024 * 1024)) as r:
        received = bytearray()
        with pytest.raises(DigestMismatch):
            async with await r.open_blob("app", digest, offset=offset, length=length) as stream:
                async for chunk in stream:
                    received += chunk
                    if length is not None and len(received) >= length:
                        break
        assert received == b""
        assert await r.blobs.stat(digest) is None


@pytest.mark.parametrize("cache_blobs", [True, False])
async def test_range_of_a_cold_good_blob_is_served_once_verified(cache_blobs: bool) -> None:
    upstream = FakeUpstream("up")
    data = random_blob(3 * 1024 * 1024, 6)
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    policy = CachingPolicy(cache_blobs=cache_blobs)
    async with make_resolver(counted, policy=policy) as r:
        async with await r.open_blob("app", digest, offset=10, length=1000) as stream:
            first = b""
            async for chunk in stream:
                first += chunk
                if len(first) >= 1000:
                    break
        assert first[:1000] == data[10:1010]
        assert counted.opened[digest] == 1
        assert (await r.blobs.stat(digest) is not None) is cache_blobs


# -- issue 11, finding 8: "could not ask" is not "not found" in listings ------------------


async def test_tags_with_the_only_upstream_down_is_an_upstream_error() -> None:
    down = FakeUpstream("down")
    down.faults.fail = True
    async with make_resolver(down) as r:
        with pytest.raises(UpstreamError) as info:
            await r.tags("app")
        assert not isinstance(info.value, NameUnknown)
        assert info.value.connector == "down"


async def test_tags_of_an_unknown_repository_with_every_upstream_up_is_name_unknown() -> None:
    async with make_resolver(FakeUpstream("up")) as r:
        with pytest.raises(NameUnknown):
            await r.tags("nothing")


async def test_catalog_with_the_only_upstream_down_is_an_upstream_error() -> None:
    down = FakeUpstream("down")
    down.faults.fail = True
    async with make_resolver(down) as r:
        with pytest.raises(UpstreamError):
            await r.repositories()
        await r.push_blob("mine", b"x", digest=Digest.from_bytes(b"x"))
        image = random_index(seed=81).children[0]
        for d, blob in image.blobs.items():
            await r.push_blob("mine", blob, digest=d)
        await r.push_manifest(
            "mine", image.manifest.data, media_type=image.manifest.media_type, tag="v1"
        )
        # Another source (the local store) answered: the catalog is what it holds.
        assert await r.repositories() == ["mine"]


# -- issue 11, finding 11: check() on a deep index chain -----------------------------------


async def test_check_of_a_thousand_deep_index_chain() -> None:
    upstream = FakeUpstream("up")
    image = random_index(seed=91).children[0]
    upstream.add("app", image)
    child = image.manifest
    for _ in range(1000):
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": child.media_type, "digest": str(child.digest), "size": child.size}
            ],
        }
        child = Manifest.parse(json.dumps(doc).encode(), OCI_INDEX)
        upstream.add("app", child)
    upstream.tag("app", "deep", child.digest)
    async with make_resolver(upstream) as r:
        report = await r.check("app", "deep")
        assert report.ok
        assert len(report.entries) == 1000 + len(image.blobs)


# -- issue 11, finding 16: upstream names outside the spec grammar are dropped ---------------


class Lister(FakeUpstream):
    def __init__(self, tags: list[str], repositories: list[str]) -> None:
        super().__init__("lister")
        self._listed_tags = tags
        self._listed_repositories = repositories

    async def tags(self, repository: str) -> list[str] | None:
        await anyio.lowlevel.checkpoint()
        return list(self._listed_tags)

    async def repositories(self) -> list[str] | None:
        await anyio.lowlevel.checkpoint()
        return list(self._listed_repositories)


BAD_NAMES = ["../../etc/passwd", "a\r\nb", "", "x" * 500, "a//b"]


async def test_invalid_upstream_names_are_dropped_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lister = Lister(["v1", *BAD_NAMES], ["ok/repo", "UPPER", *BAD_NAMES])
    async with make_resolver(lister) as r:
        assert await r.tags("app") == ["v1"]
        assert r.stats.names_dropped["lister"] == len(BAD_NAMES)
    assert "invalid tag name" in caplog.text


async def test_invalid_upstream_repository_names_are_dropped() -> None:
    lister = Lister([], ["ok/repo", "UPPER", *BAD_NAMES])
    async with make_resolver(lister) as r:
        assert await r.repositories() == ["ok/repo"]
        assert r.stats.names_dropped["lister"] == 1 + len(BAD_NAMES)


# -- issue 11, finding 19: paging through a merged catalog asks each connector once -------


async def test_paging_through_the_catalog_asks_the_upstream_once() -> None:
    lister = Lister([], [f"repo{i:03d}" for i in range(100)])
    counted = CountingConnector(lister)
    async with make_resolver(counted) as r:
        pages: list[str] = []
        last: str | None = None
        while True:
            page = await r.repositories(n=10, last=last)
            if not page:
                break
            pages += page
            last = page[-1]
        assert pages == [f"repo{i:03d}" for i in range(100)]
        assert counted.calls["repositories"] == 1
        assert r.stats.listings_cached == 10


async def test_catalog_is_asked_again_after_listing_ttl() -> None:
    lister = Lister([], ["a"])
    counted = CountingConnector(lister)
    clock_now = [1000.0]
    async with make_resolver(
        counted, clock=lambda: clock_now[0], policy=CachingPolicy(listing_ttl=30.0)
    ) as r:
        await r.repositories()
        await r.repositories()
        clock_now[0] += 31
        await r.repositories()
        assert counted.calls["repositories"] == 2


# -- issue 11, finding 2: a stalled source cannot wedge a digest --------------------------


class Stalls(FakeUpstream):
    """Answers open_blob with a stream that never sends a byte (or never answers)."""

    def __init__(self, name: str, *, at_open: bool = False) -> None:
        super().__init__(name)
        self.at_open = at_open
        self.opened = 0

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        self.opened += 1
        if self.at_open:
            await anyio.sleep(math.inf)
        size = len(self._blobs[digest])
        return BlobStream(digest, size, self._never(), offset=offset)

    async def _never(self) -> AsyncIterator[bytes]:
        await anyio.sleep(math.inf)
        yield b""  # pragma: no cover


@pytest.mark.parametrize("at_open", [False, True], ids=["stream", "open"])
async def test_stalled_first_connector_fails_over_to_the_second(at_open: bool) -> None:
    data = random_blob(256 * 1024, 7)
    stuck = Stalls("stuck", at_open=at_open)
    digest = stuck.add_blob("app", data)
    healthy = FakeUpstream("healthy")
    healthy.add_blob("app", data)
    async with make_resolver(stuck, healthy, stall_timeout=0.2) as r:
        got: list[bytes] = []

        async def client() -> None:
            async with await r.open_blob("app", digest) as stream:
                got.append(b"".join([c async for c in stream]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(client)
            await anyio.sleep(0.05)
            tg.start_soon(client)  # joins the flight stuck on the first source
        assert got == [data, data]
        assert stuck.opened == 1
        assert r.stats.stalls["stuck"] == 1
        assert r.stats.hits["healthy"] == 1
        assert await r.blobs.stat(digest) is not None


class StallsAfter(FakeUpstream):
    """Sends ``after`` bytes of the blob, then nothing ever again."""

    def __init__(self, name: str, after: int) -> None:
        super().__init__(name)
        self.after = after

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        data = self._blobs[digest]
        return BlobStream(digest, len(data), self._then_nothing(data[offset : self.after]))

    async def _then_nothing(self, head: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(head), 64 * 1024):
            yield head[start : start + 64 * 1024]
        await anyio.sleep(math.inf)


async def test_stall_after_readers_started_continues_from_the_next_connector() -> None:
    data = random_blob(3 * 1024 * 1024, 8)
    stuck = StallsAfter("stuck", after=2 * 1024 * 1024)  # past HOLD_FIRST: readers are in
    digest = stuck.add_blob("app", data)
    healthy = FakeUpstream("healthy")
    healthy.add_blob("app", data)
    counted = CountingConnector(healthy)
    async with make_resolver(stuck, counted, stall_timeout=0.2) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        assert r.stats.stalls["stuck"] == 1 and r.stats.resumes == 1
        assert counted.calls["open_blob"] == 1
        assert counted.bytes_sent == len(data) - 2 * 1024 * 1024  # only what was missing
        assert await r.blobs.stat(digest) is not None


class Trickles(FakeUpstream):
    """Sends one byte every 10 ms: never silent, far too slow."""

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        data = self._blobs[digest]
        return BlobStream(digest, len(data), self._trickle(data[offset:]), offset=offset)

    async def _trickle(self, data: bytes) -> AsyncIterator[bytes]:
        for i in range(len(data)):
            await anyio.sleep(0.01)
            yield data[i : i + 1]


async def test_trickling_first_connector_fails_over_to_the_second() -> None:
    data = random_blob(64 * 1024, 9)
    slow = Trickles("slow")
    digest = slow.add_blob("app", data)
    healthy = FakeUpstream("healthy")
    healthy.add_blob("app", data)
    async with make_resolver(slow, healthy, stall_timeout=0.2) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
        assert r.stats.stalls["slow"] == 1
        assert r.stats.hits["healthy"] == 1


async def test_stall_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidInput):
        make_resolver(stall_timeout=0)


# -- issue 11, finding 15: a manifest pushed by a sha512 digest can be pulled by it ---------


@pytest.mark.parametrize("kind", ["memory", "filesystem"])
async def test_manifest_pushed_by_sha512_digest_is_pulled_by_it(kind: str, tmp_path: Path) -> None:
    image = random_index(seed=51).children[0]
    stores: dict[str, Any] = (
        {"manifests": MemoryManifestStore(), "blobs": MemoryBlobStore()}
        if kind == "memory"
        else {
            "manifests": FilesystemManifestStore(tmp_path / "m"),
            "blobs": FilesystemBlobStore(tmp_path / "b"),
        }
    )
    sha512 = Digest.from_bytes(image.manifest.data, "sha512")
    async with Resolver("local", **stores) as r:
        for d, blob in image.blobs.items():
            await r.push_blob("app", blob, digest=d)
        wrong = Digest.from_bytes(b"other", "sha512")
        with pytest.raises(DigestMismatch):
            await r.push_manifest(
                "app", image.manifest.data, media_type=image.manifest.media_type, tag=str(wrong)
            )
        assert await r.manifests.tags("app") in (None, [])
        pushed = await r.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag=str(sha512)
        )
        assert pushed.digest == image.manifest.digest
        got = await r.get_manifest("app", str(sha512))
        assert got.data == image.manifest.data
        assert (await r.head_manifest("app", str(sha512))).size == image.manifest.size
        assert (await r.get_manifest("app", str(image.manifest.digest))).data == got.data
        assert await r.manifests.tags("app") in (None, [])


# -- delete_blob (for the server's blob DELETE) ---------------------------------------------


async def test_delete_blob_removes_the_local_copy_only() -> None:
    upstream = FakeUpstream("up")
    data = b"some bytes"
    digest = upstream.add_blob("app", data)
    async with make_resolver(upstream) as r:
        with pytest.raises(BlobUnknown):
            await r.delete_blob("app", digest)
        assert await read_all(await r.open_blob("app", digest)) == data
        assert await r.blobs.stat(digest) is not None
        await r.delete_blob("app", str(digest))
        assert await r.blobs.stat(digest) is None
        with pytest.raises(InvalidInput):
            await r.delete_blob("BAD NAME", digest)


# -- counters ---------------------------------------------------------------------------------


def test_new_counters_are_exported() -> None:
    stats = make_resolver().stats
    snapshot = stats.as_dict()
    for key in ("stalls", "names_dropped", "listings_cached"):
        assert key in snapshot
    assert isinstance(stats.stalls, Counter)


# -- issue 10: head_manifest honours per-connector overrides -------------------------------


async def test_head_manifest_through_a_connector_whose_override_does_not_cache_manifests() -> None:
    hub, other = FakeUpstream("hub"), FakeUpstream("other")
    image = random_index(seed=61).children[0]
    hub.add("app", image, tag="v1")
    other.add("cached", image, tag="v1")
    counted_hub, counted_other = CountingConnector(hub), CountingConnector(other)
    overrides = {"hub": CachingPolicy(cache_manifests=False)}
    async with make_resolver(counted_hub, counted_other, overrides=overrides) as r:
        descriptor = await r.head_manifest("app", "v1")
        assert descriptor.digest == image.manifest.digest
        assert counted_hub.calls == Counter({"head_manifest": 1})
        assert await r.manifests.get_tag("app", "v1") is None
        # A connector under the default policy is asked with a GET and cached.
        assert (await r.head_manifest("cached", "v1")).digest == image.manifest.digest
        assert counted_other.calls["get_manifest"] == 1
        await r.wait_idle()  # cached, and made durable after it was served
        assert await r.manifests.get_tag("cached", "v1") is not None
