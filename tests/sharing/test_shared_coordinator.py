"""Resolvers over one S3 bucket with a Redis coordinator fetch each blob once between them.

Each resolver stands for a replica: its own ``S3BlobStore``, its own
``RedisFetchCoordinator`` (same URL and prefix) and its own counting
connector over one fake upstream. Real moto and ``redis-server``; asyncio
and trio. Replica processes are in ``test_replicas_serve.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from backend_servers import MotoServer, RedisServer, unique

from dockerconnect import Digest, MemoryManifestStore, Resolver
from dockerconnect._resolve.shared import CoordinatorGate
from dockerconnect.errors import InvalidInput
from dockerconnect.testing import CountingConnector, FakeUpstream

pytestmark = pytest.mark.anyio

redis_module = pytest.importorskip("dockerconnect.redis")
s3_module = pytest.importorskip("dockerconnect.s3")

MiB = 1 << 20
REPO = "team/app"


class Replicas:
    def __init__(self, moto: MotoServer, bucket: str, redis: RedisServer, upstream: FakeUpstream):
        self.moto, self.bucket, self.redis, self.upstream = moto, bucket, redis, upstream
        self.prefix = unique("coord") + ":"
        self.counting: list[CountingConnector] = []
        self.resolvers: list[Resolver] = []
        self.closers: list[object] = []

    def add(self, name: str) -> Resolver:
        store = s3_module.S3BlobStore(self.bucket, **self.moto.store_args())
        coordinator = redis_module.RedisFetchCoordinator(
            self.redis.url, prefix=self.prefix, poll_interval=0.02, lease_ttl=2.0
        )
        counting = CountingConnector(self.upstream)
        resolver = Resolver(
            name,
            manifests=MemoryManifestStore(),
            blobs=store,
            connectors=[counting],
            coordinator=coordinator,
        )
        self.counting.append(counting)
        self.resolvers.append(resolver)
        self.closers += [store, coordinator]
        return resolver

    def opened(self, digest: Digest) -> int:
        return sum(c.opened[digest] for c in self.counting)


@pytest.fixture
async def replicas(moto_server: MotoServer, redis_server: RedisServer) -> AsyncIterator[Replicas]:
    bucket = unique("dc")
    moto_server.client().create_bucket(Bucket=bucket)
    made = Replicas(moto_server, bucket, redis_server, FakeUpstream("up"))
    yield made
    for closer in made.closers:
        await closer.aclose()  # type: ignore[attr-defined]


async def read(r: Resolver, digest: Digest) -> bytes:
    async with await r.open_blob(REPO, digest) as stream:
        return b"".join([chunk async for chunk in stream])


def followed(r: Resolver) -> int:
    gate = r._blobs.gate
    assert isinstance(gate, CoordinatorGate)
    return gate.followed


async def test_three_replicas_fetch_a_blob_once(replicas: Replicas) -> None:
    data = bytes(range(256)) * (6 * MiB // 256)
    digest = replicas.upstream.add_blob(REPO, data)
    replicas.upstream.faults.gate = anyio.Event()
    rs = [replicas.add(f"r{n}") for n in range(3)]
    got: list[bytes] = []

    async def pull(r: Resolver) -> None:
        got.append(await read(r, digest))

    async with rs[0], rs[1], rs[2], anyio.create_task_group() as tg:
        for r in rs:
            for _ in range(2):
                tg.start_soon(pull, r)
        with anyio.fail_after(20):
            while sum(followed(r) for r in rs) < 2:  # noqa: ASYNC110 - another replica's state
                await anyio.sleep(0.01)
        replicas.upstream.faults.gate.set()
    assert got == [data] * 6
    assert replicas.opened(digest) == 1


async def test_a_leader_that_gives_up_lets_a_follower_fetch(replicas: Replicas) -> None:
    data = b"layer" * 100_000
    digest = replicas.upstream.add_blob(REPO, data)
    a, b = replicas.add("a"), replicas.add("b")
    coordinator = a.coordinator
    assert coordinator is not None
    # Another replica holds the lease, then lets go without committing.
    lease = await coordinator.acquire(digest)
    assert lease is not None
    async with a, b, anyio.create_task_group() as tg:
        got: list[bytes] = []

        async def pull() -> None:
            got.append(await read(b, digest))

        tg.start_soon(pull)
        with anyio.fail_after(20):
            while followed(b) < 1:  # noqa: ASYNC110 - another replica's state
                await anyio.sleep(0.01)
        assert replicas.opened(digest) == 0
        await coordinator.release(lease, committed=False)
    assert got == [data]
    assert replicas.opened(digest) == 1


async def test_a_coordinator_must_look_like_one() -> None:
    with pytest.raises(InvalidInput, match="coordinator must have acquire"):
        Resolver(
            "x",
            manifests=MemoryManifestStore(),
            blobs=__import__("dockerconnect").MemoryBlobStore(),
            coordinator=object(),  # type: ignore[arg-type]
        )
