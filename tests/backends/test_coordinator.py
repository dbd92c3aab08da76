"""``RedisFetchCoordinator`` against a real ``redis-server``: leases, takeover
after expiry, and one upstream fetch per blob among racing replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from backend_servers import RedisServer, unique
from replica_worker import guide_fetch

from dockerconnect._digest import Digest
from dockerconnect._memory import MemoryBlobStore
from dockerconnect._protocols import BlobStore
from dockerconnect.errors import InvalidInput, StorageError
from dockerconnect.testing import CountingConnector, FakeUpstream, random_blob

pytest.importorskip("redis")
from dockerconnect.redis import RedisFetchCoordinator

DIGEST = Digest.from_bytes(b"a blob")

Make = Callable[..., RedisFetchCoordinator]


@pytest.fixture
async def make(redis_server: RedisServer) -> AsyncIterator[Make]:
    """Coordinators for several replicas over one Redis and one prefix."""
    prefix = unique("coord") + ":"
    made: list[RedisFetchCoordinator] = []

    def new(**kwargs: object) -> RedisFetchCoordinator:
        coordinator = RedisFetchCoordinator(redis_server.url, prefix=prefix, **kwargs)  # type: ignore[arg-type]
        made.append(coordinator)
        return coordinator

    yield new
    for coordinator in made:
        await coordinator.aclose()


@pytest.mark.anyio
async def test_one_holder_at_a_time(make: Make) -> None:
    one, two = make(owner="one"), make(owner="two")
    lease = await one.acquire(DIGEST)
    assert lease is not None
    assert lease.token.startswith("one/")
    assert await two.acquire(DIGEST) is None
    assert await one.acquire(DIGEST) is None
    assert await two.acquire(Digest.from_bytes(b"another blob")) is not None
    assert await one.release(lease, committed=False) is True
    assert await one.release(lease, committed=False) is False
    assert await two.acquire(DIGEST) is not None


@pytest.mark.anyio
async def test_expired_lease_is_taken_over_and_the_old_holder_cannot_touch_it(
    make: Make,
) -> None:
    dead, alive = make(lease_ttl=0.2, poll_interval=0.02), make(lease_ttl=30.0)
    stale = await dead.acquire(DIGEST)
    assert stale is not None
    # The holder never renews (it died): waiters are told to take over.
    with anyio.fail_after(30):
        assert await alive.wait(DIGEST) == "released"
    fresh = await alive.acquire(DIGEST)
    assert fresh is not None
    # The old holder wakes up: its renewal and release change nothing.
    assert await dead.renew(stale) is False
    assert await dead.release(stale, committed=True) is False
    assert await dead.acquire(DIGEST) is None
    assert await alive.renew(fresh) is True


@pytest.mark.anyio
async def test_keep_renews_past_the_ttl(make: Make) -> None:
    holder, other = make(lease_ttl=0.3), make()
    lease = await holder.acquire(DIGEST)
    assert lease is not None
    async with holder.keep(lease):
        for _ in range(8):  # well past one lease_ttl
            await anyio.sleep(0.1)
            assert await other.acquire(DIGEST) is None
    assert await holder.release(lease, committed=False) is True
    assert await other.acquire(DIGEST) is not None


@pytest.mark.anyio
async def test_keep_cancels_the_fetch_when_the_lease_is_lost(make: Make) -> None:
    holder, thief = make(lease_ttl=0.3), make()
    lease = await holder.acquire(DIGEST)
    assert lease is not None
    reached_the_end = False
    with pytest.raises(StorageError, match="lease expired") as info:
        async with holder.keep(lease):
            # Another replica takes the lease from under us (as after a stall).
            assert await thief.release(lease, committed=False) is True
            assert await thief.acquire(DIGEST) is not None
            with anyio.fail_after(30):
                await anyio.sleep_forever()
            reached_the_end = True
    assert not reached_the_end
    assert info.value.digest == str(DIGEST)


@pytest.mark.anyio
async def test_wait_sees_the_commit(make: Make) -> None:
    holder, waiter = make(), make(poll_interval=0.02)
    lease = await holder.acquire(DIGEST)
    assert lease is not None
    outcomes: list[str] = []

    async def wait() -> None:
        outcomes.append(await waiter.wait(DIGEST))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.1)
            assert outcomes == []
            assert await holder.release(lease, committed=True) is True
    assert outcomes == ["committed"]
    held = Digest.from_bytes(b"held")
    assert await holder.acquire(held) is not None
    with pytest.raises(TimeoutError):
        await waiter.wait(held, timeout=0.05)


async def fetch_through(
    coordinator: RedisFetchCoordinator,
    upstream: CountingConnector,
    store: BlobStore,
    digest: Digest,
    *,
    die_after_first_chunk: bool = False,
) -> bytes:
    """How a replica fetches a blob under the coordinator's rule."""
    while True:
        if (stream := await store.open(digest)) is not None:
            async with stream:
                return await stream.read()
        lease = await coordinator.acquire(digest)
        if lease is None:
            await coordinator.wait(digest)
            continue
        if await store.stat(digest) is not None:  # committed since we looked
            await coordinator.release(lease, committed=True)
            continue
        async with coordinator.keep(lease):
            source = await upstream.open_blob("app", digest)
            assert source is not None
            async with source, store.ingest(digest, source.size) as writer:
                async for chunk in source:
                    await writer.write(chunk)
                    if die_after_first_chunk:
                        # Gone without a word: no commit, no release.
                        raise _Died
                await writer.commit()
        await coordinator.release(lease, committed=True)


class _Died(Exception):
    pass


@pytest.mark.anyio
async def test_racing_replicas_fetch_once(make: Make) -> None:
    data = random_blob(3 << 20, 1)
    fake = FakeUpstream("hub")
    digest = fake.add_blob("app", data)
    upstream = CountingConnector(fake)
    store = MemoryBlobStore()  # stands for the shared S3 bucket
    results: list[bytes] = []

    async def replica(coordinator: RedisFetchCoordinator) -> None:
        results.append(await fetch_through(coordinator, upstream, store, digest))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(replica, make(owner=f"replica-{n}", poll_interval=0.02))
    assert results == [data] * 6
    assert upstream.calls["open_blob"] == 1


@pytest.mark.anyio
async def test_a_dead_holder_is_taken_over(make: Make) -> None:
    data = random_blob(1 << 20, 2)
    fake = FakeUpstream("hub", chunk_size=64 * 1024)
    digest = fake.add_blob("app", data)
    upstream = CountingConnector(fake)
    store = MemoryBlobStore()
    dying = make(owner="dying", lease_ttl=0.3)
    with pytest.raises(_Died):
        await fetch_through(dying, upstream, store, digest, die_after_first_chunk=True)
    survivor = make(owner="survivor", poll_interval=0.02)
    with anyio.fail_after(60):
        assert await fetch_through(survivor, upstream, store, digest) == data
    assert upstream.calls["open_blob"] == 2


@pytest.mark.anyio
async def test_shared_misses(make: Make) -> None:
    one, two = make(), make()
    assert await two.is_miss("hub", "library/app", "v1") is False
    await one.remember_miss("hub", "library/app", "v1", ttl=30.0)
    assert await two.is_miss("hub", "library/app", "v1") is True
    assert await two.is_miss("hub:2", "library/app", "v1") is False
    assert await two.is_miss("hub", "library/app", "v2") is False
    await two.forget_miss("hub", "library/app", "v1")
    assert await one.is_miss("hub", "library/app", "v1") is False
    await one.remember_miss("hub", "library/app", "v1", ttl=0.05)
    await anyio.sleep(0.2)
    assert await two.is_miss("hub", "library/app", "v1") is False


@pytest.mark.parametrize("bad", [{"lease_ttl": 0}, {"poll_interval": -1.0}, {"lease_ttl": "30"}])
def test_misconfiguration(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        RedisFetchCoordinator(**bad)  # type: ignore[arg-type]


class _LooksTooEarly:
    """A store whose first ``open`` answers as it did just before another
    replica's commit: absent."""

    def __init__(self, inner: MemoryBlobStore) -> None:
        self.inner = inner
        self.early = True

    async def open(self, digest: Digest, *, offset: int = 0) -> object:
        if self.early:
            self.early = False
            return None
        return await self.inner.open(digest, offset=offset)

    async def stat(self, digest: Digest) -> object:
        return await self.inner.stat(digest)


@pytest.mark.anyio
async def test_the_guides_fetch_looks_again_after_taking_the_lease(make: Make) -> None:
    # Another replica committed the blob and let go between this replica's
    # first look and its lease: the lease is free, the blob is there.
    data = random_blob(1000, 3)
    fake = FakeUpstream("hub")
    digest = fake.add_blob("app", data)
    upstream = CountingConnector(fake)
    shared = MemoryBlobStore()
    async with shared.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    coordinator = make()
    stream = await guide_fetch()(coordinator, _LooksTooEarly(shared), upstream, "app", digest)
    async with stream:
        assert await stream.read() == data
    assert upstream.calls["open_blob"] == 0
    assert await coordinator.acquire(digest) is not None  # released, and marked committed
    assert await coordinator.wait(digest) == "committed"
