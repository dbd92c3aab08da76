"""Several Resolvers, one per "replica", sharing nothing but one S3 bucket and
one Redis database: what one takes in, every other serves."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from backend_servers import MotoServer, RedisServer, require, unique

from dockerconnect import CachingPolicy, Resolver
from dockerconnect.testing import (
    CountingConnector,
    DistributionRegistry,
    FakeUpstream,
    push_content,
    random_image,
)

pytest.importorskip("aiobotocore")
pytest.importorskip("redis")
from dockerconnect.redis import RedisManifestStore
from dockerconnect.s3 import MIN_PART_SIZE, S3BlobStore

REPLICAS = 3


class Replicas:
    """Stores for ``REPLICAS`` replicas: each its own clients, over the same bucket and keys."""

    def __init__(self, moto: MotoServer, bucket: str, redis: RedisServer) -> None:
        self.moto, self.bucket, self.redis = moto, bucket, redis
        self.prefix = unique("replicas") + ":"
        self.stack = AsyncExitStack()

    async def stores(self) -> tuple[RedisManifestStore, S3BlobStore]:
        manifests = await self.stack.enter_async_context(
            RedisManifestStore(self.redis.url, prefix=self.prefix)
        )
        blobs = await self.stack.enter_async_context(
            S3BlobStore(self.bucket, part_size=MIN_PART_SIZE, **self.moto.store_args())
        )
        return manifests, blobs


@pytest.fixture
async def replicas(
    moto_server: MotoServer, bucket: str, redis_server: RedisServer
) -> AsyncIterator[Replicas]:
    shared = Replicas(moto_server, bucket, redis_server)
    async with shared.stack:
        yield shared


@pytest.mark.anyio
async def test_pushed_through_one_served_by_every_other(replicas: Replicas) -> None:
    image = random_image(layers=2, layer_size=[MIN_PART_SIZE + 4321, 2000], seed=1)
    resolvers = []
    for n in range(REPLICAS):
        manifests, blobs = await replicas.stores()
        resolvers.append(Resolver(f"replica-{n}", manifests=manifests, blobs=blobs))
    first, *others = resolvers
    async with first:
        for digest, data in image.blobs.items():
            await first.push_blob("team/app", data, digest=digest)
        await first.push_manifest(
            "team/app", image.manifest.data, media_type=image.manifest.media_type, tag="v1"
        )
    for other in others:
        async with other:
            manifest = await other.get_manifest("team/app", "v1")
            assert manifest == image.manifest
            for digest, data in image.blobs.items():
                stream = await other.open_blob("team/app", digest)
                async with stream:
                    assert stream.source == other.name
                    assert await stream.read() == data
            assert await other.tags("team/app") == ["v1"]
            assert (await other.check("team/app", "v1")).ok


@pytest.mark.anyio
async def test_cached_by_one_is_not_fetched_again_by_another(replicas: Replicas) -> None:
    image = random_image(layers=1, layer_size=MIN_PART_SIZE + 99, layer_format="raw", seed=2)
    upstream = FakeUpstream("hub")
    upstream.add("library/app", image, tag="latest")
    hub = CountingConnector(upstream)
    policy = CachingPolicy(tag_ttl=3600.0)

    manifests, blobs = await replicas.stores()
    async with Resolver(
        "replica-0", manifests=manifests, blobs=blobs, connectors=[hub], policy=policy
    ) as first:
        assert await first.get_manifest("library/app", "latest") == image.manifest
        for digest, data in image.blobs.items():
            stream = await first.open_blob("library/app", digest)
            async with stream:
                assert await stream.read() == data
    fetched = dict(hub.calls)
    assert fetched["open_blob"] == len(image.blobs)

    for n in range(1, REPLICAS):
        manifests, blobs = await replicas.stores()
        async with Resolver(
            f"replica-{n}", manifests=manifests, blobs=blobs, connectors=[hub], policy=policy
        ) as other:
            assert await other.get_manifest("library/app", "latest") == image.manifest
            for digest, data in image.blobs.items():
                stream = await other.open_blob("library/app", digest)
                async with stream:
                    assert stream.source == other.name
                    assert await stream.read() == data
    # The fresh tag, the manifest and every blob came from Redis and S3.
    assert dict(hub.calls) == fetched


# --- the guide's replica program, run as written --------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "replicas.md"


def guide_block(first_line: str) -> str:
    """The guide's ```python block that starts with ``first_line``."""
    text = GUIDE.read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"no block starting {first_line!r} in {GUIDE}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_guides_replica_program(
    backend: str,
    moto_server: MotoServer,
    bucket: str,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require(
        "docker-registry (CNCF distribution)",
        DistributionRegistry.available(),
        "apt-get install docker-registry",
    )
    code = guide_block("# replica.py")
    image = random_image(seed=3)
    with DistributionRegistry() as upstream:
        anyio.run(push_content, upstream.url, "library/alpine", image, backend=backend)
        monkeypatch.setenv("DOCKERCONNECT_REDIS_URL", redis_server.url)
        monkeypatch.setenv("DOCKERCONNECT_S3_BUCKET", bucket)
        monkeypatch.setenv("DOCKERCONNECT_S3_ENDPOINT", moto_server.url)
        monkeypatch.setenv("DOCKERCONNECT_UPSTREAM", upstream.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
        monkeypatch.setenv("AWS_REGION", moto_server.region)
        first: dict[str, object] = {"__name__": "replica"}
        exec(compile(code, str(GUIDE), "exec"), first)
        anyio.run(first["main"], backend=backend)  # type: ignore[arg-type]
    # The upstream is gone: a second replica serves the tag from the shared state.
    second: dict[str, object] = {"__name__": "replica"}
    exec(compile(code, str(GUIDE), "exec"), second)
    anyio.run(second["main"], backend=backend)  # type: ignore[arg-type]
    printed = capsys.readouterr().out.split()
    assert printed == [str(image.manifest.digest)] * 2
    held = moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert held == []  # the program pulled a manifest only: no blob was fetched
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        assert client.hexists("registry-cache:tags:library/alpine", "latest")
        client.delete(*client.keys("registry-cache:*"))


@pytest.mark.anyio
async def test_a_miss_seen_by_one_replica_costs_the_others_nothing(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """The coordinator's shared miss cache: the upstream is asked once for a
    tag it does not have, however many replicas ask, within ``negative_ttl``."""
    from dockerconnect.errors import ManifestUnknown
    from dockerconnect.redis import RedisFetchCoordinator

    upstream = FakeUpstream("hub")
    upstream.add("library/app", random_image(seed=3), tag="latest")
    hub = CountingConnector(upstream)
    policy = CachingPolicy(negative_ttl=600.0)
    asked = []
    for n in range(REPLICAS):
        manifests, blobs = await replicas.stores()
        coordinator = await replicas.stack.enter_async_context(
            RedisFetchCoordinator(redis_server.url, prefix=replicas.prefix)
        )
        async with Resolver(
            f"replica-{n}",
            manifests=manifests,
            blobs=blobs,
            connectors=[hub],
            policy=policy,
            coordinator=coordinator,
        ) as replica:
            with pytest.raises(ManifestUnknown):
                await replica.get_manifest("library/app", "no-such-tag")
            asked.append(hub.total)
            assert replica.stats.negative_hits == (0 if n == 0 else 1)
    assert asked == [1, 1, 1]  # only the first replica reached the upstream


@pytest.mark.anyio
async def test_a_blob_not_cached_is_streamed_whole_under_a_short_lease(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """A blob the policy does not cache ends the lead early; the lease is kept
    (renewed) until the transfer ends instead of being released under it, which
    made the renewal cancel the transfer with ``StorageError``."""
    from dockerconnect.redis import RedisFetchCoordinator

    data = os.urandom(2 * 1024 * 1024 + 7)
    upstream = FakeUpstream("hub")
    digest = upstream.add_blob("library/app", data)
    upstream.faults.delay = 0.05  # per chunk: the transfer outlasts several renewals
    manifests, blobs = await replicas.stores()
    coordinator = await replicas.stack.enter_async_context(
        RedisFetchCoordinator(redis_server.url, prefix=replicas.prefix, lease_ttl=0.6)
    )
    async with Resolver(
        "replica-0",
        manifests=manifests,
        blobs=blobs,
        connectors=[CountingConnector(upstream)],
        policy=CachingPolicy(cache_blobs=False),
        coordinator=coordinator,
    ) as replica:
        stream = await replica.open_blob("library/app", digest)
        async with stream:
            assert await stream.read() == data
