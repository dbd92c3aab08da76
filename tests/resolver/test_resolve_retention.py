"""Retention: only cached content goes, idle first, then least recently used."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from _resolve_helpers import Clock, read_all

from dockerconnect import (
    BlobStore,
    BlobStream,
    CachingPolicy,
    Digest,
    Event,
    FilesystemBlobStore,
    FilesystemManifestStore,
    ManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    PruneReport,
    Resolver,
    RetentionPolicy,
)
from dockerconnect._flight import BlobFlight
from dockerconnect.errors import InvalidInput, Unsupported
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio

Stores = Callable[[], tuple[ManifestStore, BlobStore]]


@pytest.fixture(params=["memory", "filesystem"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    if request.param == "memory":
        return lambda: (MemoryManifestStore(), MemoryBlobStore())
    return lambda: (FilesystemManifestStore(tmp_path / "m"), FilesystemBlobStore(tmp_path / "b"))


def _resolver(stores: Stores, *connectors: object, clock: Clock, **kwargs: object) -> Resolver:
    manifests, blobs = stores()
    return Resolver(
        "local",
        manifests=manifests,
        blobs=blobs,
        connectors=connectors,  # type: ignore[arg-type]
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def _blobs(n: int, size: int = 1000) -> list[bytes]:
    return [bytes([i]) * size for i in range(n)]


async def test_pushed_content_survives_any_bounds(stores: Stores) -> None:
    hub = FakeUpstream("hub")
    upstream_image = random_image(seed=1)
    hub.add("app", upstream_image, tag="v1")
    clock = Clock()
    retention = RetentionPolicy(max_bytes=0, max_idle=0.0, interval=None)
    policy = CachingPolicy(pin_on_push=True)
    async with _resolver(stores, hub, clock=clock, retention=retention, policy=policy) as r:
        pushed = random_image(seed=2)
        for digest, data in pushed.blobs.items():
            await r.push_blob("mine", data, digest=digest)
        await r.push_manifest(
            "mine", pushed.manifest.data, media_type=pushed.manifest.media_type, tag="v1"
        )
        # pin_on_push copies the upstream image's blobs here: pushed too.
        await r.push_manifest(
            "app", upstream_image.manifest.data, media_type=upstream_image.manifest.media_type
        )
        cached_data = b"cached only" * 100
        cached = hub.add_blob("app", cached_data)
        assert await read_all(await r.open_blob("app", cached)) == cached_data
        await r.wait_idle()  # past max_bytes=0: pruned at once, in the background
        clock.advance(10_000)
        report = await r.prune()
        assert report.kept_bytes == 0
        assert r.stats.pruned_blobs == 1 and r.stats.pruned_bytes == len(cached_data)
        assert await r.blobs.stat(cached) is None
        for digest in (*pushed.blobs, *upstream_image.blobs):
            assert await r.blobs.stat(digest) is not None
        assert (await r.get_manifest("mine", "v1")).digest == pushed.manifest.digest
        assert await r.manifests.get_manifest("app", upstream_image.manifest.digest) is not None


async def test_least_recently_used_goes_first_until_within_max_bytes(stores: Stores) -> None:
    hub = FakeUpstream("hub")
    datas = _blobs(4)
    digests = [hub.add_blob("app", d) for d in datas]
    counted = CountingConnector(hub)
    clock = Clock()
    retention = RetentionPolicy(max_bytes=2000, interval=None)
    async with _resolver(stores, counted, clock=clock, retention=retention) as r:

        async def pull(i: int) -> None:
            assert await read_all(await r.open_blob("app", digests[i])) == datas[i]
            await r.wait_idle()  # a prune started past max_bytes has run
            clock.advance(1)

        await pull(0)
        await pull(1)
        await pull(0)  # used again: now more recent than 1
        assert r.stats.prunes == 1  # the first cached blob had it learn the size
        await pull(2)  # would be 3000 bytes: room is made first, the least recently used goes
        held = [await r.blobs.stat(d) is not None for d in digests]
        assert held == [True, False, True, False]
        # Pruned before blob 2 was committed: 1000 bytes kept, then 2000 held.
        assert r.stats.pruned_blobs == 1 and r.stats.cached_bytes == 1000
        counted.reset()
        await pull(0)
        await pull(2)
        assert counted.opened == {}  # both were kept: no upstream request
        report = await r.prune()
        assert report == PruneReport(0, 0, 0, 2000)
        await pull(3)  # 0 is now the least recently used
        held = [await r.blobs.stat(d) is not None for d in digests]
        assert held == [False, False, True, True]
        assert counted.opened == {digests[3]: 1}


async def test_max_idle_removes_only_what_was_unused_for_that_long(stores: Stores) -> None:
    hub = FakeUpstream("hub")
    image = random_image(seed=3)
    hub.add("app", image, tag="v1")
    old, recent = (hub.add_blob("app", d) for d in _blobs(2))
    clock = Clock()
    retention = RetentionPolicy(max_idle=3600.0, interval=None)
    async with _resolver(stores, hub, clock=clock, retention=retention) as r:
        await r.get_manifest("app", "v1")
        await read_all(await r.open_blob("app", old))
        await r.wait_idle()  # the commit (and its mark) may finish after the last byte
        clock.advance(3000)
        await read_all(await r.open_blob("app", recent))
        await r.wait_idle()
        clock.advance(1000)  # old and the manifest: idle 4000 s; recent: 1000 s
        report = await r.prune()
        assert report.removed_blobs == 1 and report.removed_manifests == 1
        assert await r.blobs.stat(old) is None
        assert await r.blobs.stat(recent) is not None
        # The cached tag's manifest is fetched through the connectors again.
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest


async def test_a_blob_being_read_is_read_to_its_end_whole(stores: Stores) -> None:
    hub = FakeUpstream("hub")
    data = os.urandom(3 * 1024 * 1024 + 7)
    digest = hub.add_blob("app", data)
    clock = Clock()
    retention = RetentionPolicy(max_idle=60.0, interval=None)
    async with _resolver(stores, hub, clock=clock, retention=retention) as r:
        await read_all(await r.open_blob("app", digest))
        await r.wait_idle()  # committed: the next read is from the store
        stream = await r.open_blob("app", digest)
        async with stream:
            chunks = aiter(stream)
            got = [await anext(chunks)]
            clock.advance(120)
            report = await r.prune()
            assert report.removed_blobs == 1
            assert await r.blobs.stat(digest) is None
            got.extend([chunk async for chunk in chunks])
        assert Digest.from_bytes(b"".join(got)) == digest


async def test_events_and_the_store_without_a_usage_log() -> None:
    class Plain:  # a BlobStore without the UsageLog capability
        def __init__(self) -> None:
            self.inner = MemoryBlobStore()

        def __getattr__(self, name: str) -> object:
            if name in ("mark", "touch", "flush", "cached", "remove_cached"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    with pytest.raises(Unsupported, match="cannot prune"):
        Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=Plain(),  # type: ignore[arg-type]
            retention=RetentionPolicy(max_bytes=1),
        )
    with pytest.raises(InvalidInput):
        RetentionPolicy(max_bytes=-1)
    with pytest.raises(InvalidInput):
        RetentionPolicy(interval=0)
    hub = FakeUpstream("hub")
    digest = hub.add_blob("app", b"x" * 10)
    seen: list[Event] = []

    class Seen:
        def on_event(self, event: Event) -> None:
            seen.append(event)

    clock = Clock()
    async with _resolver(
        lambda: (MemoryManifestStore(), MemoryBlobStore()),
        hub,
        clock=clock,
        retention=RetentionPolicy(max_idle=1.0, interval=None),
        observers=[Seen()],
    ) as r:
        await read_all(await r.open_blob("app", digest))
        await read_all(await r.open_blob("app", digest))
        clock.advance(10)
        await r.prune()
    kinds = [e.kind for e in seen]
    assert kinds == ["fetched", "cached", "served", "pruned"]
    assert seen[0].connector == "hub" and seen[-1].digest == digest and seen[-1].size == 10


async def test_background_pruning_every_interval() -> None:
    hub = FakeUpstream("hub")
    digest = hub.add_blob("app", b"y" * 100)
    retention = RetentionPolicy(max_bytes=0, interval=0.01)
    async with _resolver(
        lambda: (MemoryManifestStore(), MemoryBlobStore()), hub, clock=Clock(), retention=retention
    ) as r:
        await read_all(await r.open_blob("app", digest))
        for _ in range(1000):  # bounded: the loop prunes within a few intervals
            if r.stats.prunes and await r.blobs.stat(digest) is None:
                break
            await anyio.sleep(0.01)
        assert await r.blobs.stat(digest) is None
        await r.wait_idle()  # the pruning loop is not work wait_idle waits for


_SRC = str(Path(__file__).resolve().parents[2] / "src")

_CHILD = textwrap.dedent(
    """
    import sys, anyio
    from dockerconnect import Digest, FilesystemBlobStore

    async def main(root, count):
        store = FilesystemBlobStore(root)
        for i in range(count):
            data = bytes([i]) * 65536
            digest = Digest.from_bytes(data)
            async with store.ingest(digest, len(data)) as writer:
                await writer.write(data)
                await writer.commit()
            # Committed: whatever a prune did meanwhile, the blob is held, whole.
            stream = await store.open(digest)
            assert stream is not None, f"blob {i} removed under its commit"
            async with stream:
                got = b"".join([c async for c in stream])
            assert got == data, f"blob {i} torn"
        print("ok", count, flush=True)

    anyio.run(main, sys.argv[1], int(sys.argv[2]))
    """
)


async def test_a_prune_racing_an_ingest_in_another_process(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = FilesystemBlobStore(root)
    count = 40
    long_ago = 1_000.0  # marked cached and idle since long ago
    for i in range(count):
        data = bytes([i]) * 65536
        digest = Digest.from_bytes(data)
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        await store.mark(digest, source="hub", at=long_ago)
    env = {**os.environ, "PYTHONPATH": _SRC}
    child = subprocess.Popen(  # noqa: ASYNC220 - runs beside the prunes, polled below
        [sys.executable, "-c", _CHILD, str(root), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    removed = 0
    try:
        async with Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=store,
            retention=RetentionPolicy(max_idle=3600.0, interval=None),
        ) as r:  # the real clock: whatever the child commits is in use now
            for _ in range(2000):  # bounded: until the child is done
                removed += (await r.prune()).removed_blobs
                if child.poll() is not None:
                    break
    finally:
        out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", str(count)]
    for i in range(count):
        data = bytes([i]) * 65536
        stream = await store.open(Digest.from_bytes(data))
        assert stream is not None
        assert await read_all(stream) == data
    # Removed ones were published again by the child (unmarked, so kept);
    # the others were refreshed by its commit: in use, not idle. Either way
    # nothing is cached and idle any more.
    assert all(b.last_used > long_ago for b in await store.cached())
    assert 0 <= removed <= count


_PRUNER = textwrap.dedent(
    """
    import sys, anyio
    from dockerconnect import FilesystemBlobStore, MemoryManifestStore, Resolver, RetentionPolicy

    async def main(root):
        policy = RetentionPolicy(max_bytes=0, interval=None)
        store = FilesystemBlobStore(root)
        async with Resolver("p", manifests=MemoryManifestStore(), blobs=store,
                            retention=policy) as r:
            sys.stdin.readline()  # start together
            report = await r.prune()
        print(report.removed_blobs, report.freed_bytes, flush=True)

    anyio.run(main, sys.argv[1])
    """
)


async def test_processes_pruning_one_store_together_count_each_removal_once(
    tmp_path: Path,
) -> None:
    root = tmp_path / "b"
    store = FilesystemBlobStore(root)
    count, size = 60, 4096
    for i in range(count):
        data = i.to_bytes(2, "big") * (size // 2)
        digest = Digest.from_bytes(data)
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        await store.mark(digest, source="hub", at=1_000.0 + i)
    env = {**os.environ, "PYTHONPATH": _SRC}
    pruners = [
        subprocess.Popen(  # noqa: ASYNC220 - started together, awaited below
            [sys.executable, "-c", _PRUNER, str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(3)
    ]
    results = []
    for pruner in pruners:
        assert pruner.stdin is not None
        pruner.stdin.write(b"go\n")
        pruner.stdin.flush()
    for pruner in pruners:
        out, err = await anyio.to_thread.run_sync(lambda p=pruner: p.communicate(timeout=120))
        assert pruner.returncode == 0, err.decode()
        removed, freed = map(int, out.split())
        results.append((removed, freed))
    assert sum(r for r, _ in results) == count
    assert sum(f for _, f in results) == count * size
    assert await store.cached() == []


def _on_disk(
    root: Path,
    connector: object,
    *,
    name: str = "local",
    max_bytes: int | None = None,
    coordinator: object = None,
) -> Resolver:
    """A resolver over filesystem stores under ``root`` (several share one root),
    with retention bounded at ``max_bytes`` when given (pruning only when asked
    or to make room)."""
    bound = None if max_bytes is None else RetentionPolicy(max_bytes=max_bytes, interval=None)
    return Resolver(
        name,
        manifests=FilesystemManifestStore(root / "m"),
        blobs=FilesystemBlobStore(root / "b"),
        connectors=[connector],  # type: ignore[list-item]
        retention=bound,
        coordinator=coordinator,
    )


async def test_a_blob_read_through_its_flight_is_not_pruned_under_a_lagging_reader(
    tmp_path: Path,
) -> None:
    """A reader far behind a cold fetch (it replays from the store) reads the
    blob to its end even when fetching another blob makes retention prune."""
    size = 8 * 1024 * 1024
    first, second = os.urandom(size), os.urandom(size)
    upstream = FakeUpstream("up")
    a = upstream.add_blob("app", first)
    b = upstream.add_blob("app", second)
    async with _on_disk(
        tmp_path, CountingConnector(upstream), max_bytes=10 * 1024 * 1024
    ) as resolver:
        slow = await resolver.open_blob("app", a)
        async with slow:
            chunks = aiter(slow)
            head = await anext(chunks)  # then pause, far behind the fetch
            with anyio.fail_after(60):
                await resolver.wait_idle()  # A's fetch ended: committed, reader still behind
                assert await resolver.blobs.stat(Digest.parse(a)) is not None
                other = await resolver.open_blob("app", b)
                async with other:
                    assert await other.read() == second  # makes room: A is a candidate
                await resolver.wait_idle()  # B's commit, and its admission, are done
                # Still being read here: kept (B's admission pruned nothing).
                assert await resolver.blobs.stat(Digest.parse(a)) is not None
                rest = b"".join([chunk async for chunk in chunks])
        assert head + rest == first


async def _marked(store: BlobStore, digest: Digest) -> bool:
    """Whether ``digest`` is committed and marked as cached (so a prune sees it)."""
    assert isinstance(store, FilesystemBlobStore)
    return any(blob.digest == digest for blob in await store.cached())


class _SlowRelease:
    """A fetch coordinator whose ``release`` waits for ``go``: each fetch stays
    in the air, committed, until the test lets its clean-up finish."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.released = 0

    async def acquire(self, digest: Digest) -> object:
        return digest

    @contextlib.asynccontextmanager
    async def keep(self, lease: object) -> AsyncIterator[object]:
        yield lease

    async def release(self, lease: object, *, committed: bool) -> bool:
        await self.go.wait()
        self.released += 1
        return True

    async def wait(self, digest: Digest, *, timeout: float | None = None) -> str:
        return "released"


async def test_a_committed_blob_nobody_reads_is_pruned_while_its_fetch_cleans_up(
    tmp_path: Path,
) -> None:
    """Room for a new blob is made from a committed one even when its fetch's
    clean-up has not finished: nobody reads it, and new readers go to the store."""
    size = 1024 * 1024
    upstream = FakeUpstream("up")
    digests = [upstream.add_blob("app", os.urandom(size)) for _ in range(3)]
    coordinator = _SlowRelease()
    async with _on_disk(
        tmp_path, CountingConnector(upstream), max_bytes=2 * size, coordinator=coordinator
    ) as resolver:
        try:
            with anyio.fail_after(30):
                for digest in digests:
                    stream = await resolver.open_blob("app", digest)
                    async with stream:
                        await stream.read()
                    # Read and verified; committed in the background, its lease
                    # kept: nothing to wait on but the store.
                    while not await _marked(resolver.blobs, Digest.parse(digest)):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert coordinator.released == 0
                held = [await resolver.blobs.stat(Digest.parse(d)) for d in digests]
                # The first made room for the third, though its fetch is still
                # in the air (the second too, when the admission ran before the
                # second's commit had left it): never more than the bound.
                assert held[0] is None
                assert held[2] is not None
                assert sum(h.size for h in held if h is not None) <= 2 * size
        finally:
            coordinator.go.set()
        await resolver.wait_idle()
        assert coordinator.released == 3


async def test_which_flights_keep_their_blob_from_retention() -> None:
    """Retention leaves a blob while its flight fetches or commits it, while it
    has readers, and while another process follows it; not once it committed."""
    digest = Digest.from_bytes(b"x")
    flight = BlobFlight(digest, spool_dir=None)
    assert flight.keeps_blob  # fetching
    flight.committed = True
    assert not flight.keeps_blob  # committed, clean-up running: new readers use the store
    flight.reserve()
    assert flight.keeps_blob  # a reader may move on to the committed blob
    flight.release()
    flight.shown = True
    assert flight.keeps_blob  # another process reads the store once we let go
    flight.finish()
    assert not flight.keeps_blob


class _LingeringStream(BlobStream):
    """A stream whose second close (the fetch's clean-up, after its commit)
    waits for ``go``: the fetch stays in the air, committed, until then."""

    go: anyio.Event

    def __init__(self, stream: BlobStream, chunks: AsyncIterator[bytes] | None = None) -> None:
        super().__init__(
            stream.digest,
            stream.size,
            aiter(stream) if chunks is None else chunks,
            offset=stream.offset,
            source=stream.source,
        )
        self._inner = stream
        self._closes = 0

    async def aclose(self) -> None:
        self._closes += 1
        if self._closes > 1:
            await self.go.wait()
        await self._inner.aclose()
        await super().aclose()


class _Lingering(CountingConnector):
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        stream = await super().open_blob(repository, digest, offset=offset)
        return None if stream is None else _LingeringStream(stream)


async def test_a_reader_after_the_prune_of_a_just_committed_blob_gets_it_whole(
    tmp_path: Path,
) -> None:
    """A committed blob is pruned while its fetch still holds the in-progress
    file; the next reader follows that file. It is shown nothing (the blob may
    be gone), so it fetches the blob itself: whole, and no error."""
    _LingeringStream.go = anyio.Event()
    data = os.urandom(1200 * 1024)  # past HOLD_FIRST: a follower shown it could not be replaced
    upstream = FakeUpstream("up")
    digest = Digest.parse(upstream.add_blob("app", data))
    connector = _Lingering(upstream)
    async with _on_disk(tmp_path, connector, max_bytes=1024 * 1024) as resolver:
        try:
            with anyio.fail_after(30):
                async with await resolver.open_blob("app", digest) as first:
                    assert await first.read() == data
                # Committed in the background, its clean-up held: nothing to
                # wait on but the store.
                while not await _marked(resolver.blobs, digest):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                # Removed once the fetch has marked itself committed, though
                # its clean-up is still held.
                while not (await resolver.prune()).removed_blobs:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                got: list[bytes] = []

                async def read_again() -> None:
                    async with await resolver.open_blob("app", digest) as again:
                        got.extend([chunk async for chunk in again])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_again)
                    await anyio.sleep(0.3)  # the first fetch notices its follower meanwhile
                    _LingeringStream.go.set()
                assert b"".join(got) == data
        finally:
            _LingeringStream.go.set()
        await resolver.wait_idle()
    assert connector.opened[digest] == 2  # fetched again: it had been pruned


class _PausedStream(_LingeringStream):
    """A lingering stream that also stops after its first 256 KiB until ``resume``."""

    resume: anyio.Event

    def __init__(self, stream: BlobStream) -> None:
        super().__init__(stream, _paused(stream, self))


async def _paused(stream: BlobStream, paused: _PausedStream) -> AsyncIterator[bytes]:
    data = b"".join([chunk async for chunk in stream])
    piece = 256 * 1024
    yield data[:piece]
    await paused.resume.wait()
    for at in range(piece, len(data), piece):
        yield data[at : at + piece]


class _Paused(_Lingering):
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        stream = await CountingConnector.open_blob(self, repository, digest, offset=offset)
        return None if stream is None else _PausedStream(stream)


async def test_a_blob_another_fetch_follows_stays_until_the_leader_lets_go(
    tmp_path: Path,
) -> None:
    """A second resolver over the same root follows a fetch before it commits:
    the leader's prune after the commit leaves the blob, which the follower
    then reads from the store; the upstream is asked once."""
    _LingeringStream.go, _PausedStream.resume = anyio.Event(), anyio.Event()
    data = os.urandom(1200 * 1024)
    upstream = FakeUpstream("up")
    digest = Digest.parse(upstream.add_blob("app", data))
    connector = _Paused(upstream)
    leader = _on_disk(tmp_path, connector, name="leader", max_bytes=1024 * 1024)
    follower = _on_disk(tmp_path, connector, name="follower")
    async with leader, follower:
        try:
            with anyio.fail_after(30):
                got: dict[str, bytes] = {}

                async def read(name: str, resolver: Resolver) -> None:
                    async with await resolver.open_blob("app", digest) as stream:
                        got[name] = await stream.read()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, "leader", leader)
                    await anyio.sleep(0.2)  # the leader's fetch is under way, paused
                    tg.start_soon(read, "follower", follower)
                    await anyio.sleep(0.3)  # the follower follows; the leader notices
                    _PausedStream.resume.set()
                    while not await _marked(leader.blobs, digest) or "leader" not in got:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    # Committed and read here, the leader's clean-up held: only
                    # its follower keeps it.
                    assert (await leader.prune()).removed_blobs == 0
                    _LingeringStream.go.set()
                assert got == {"leader": data, "follower": data}
        finally:
            _PausedStream.resume.set()
            _LingeringStream.go.set()
    assert connector.opened[digest] == 1
