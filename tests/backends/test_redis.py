"""``RedisManifestStore`` against a real ``redis-server``: the conformance suite,
the referrers index, racing replicas, and failures that lose nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

import anyio
import pytest
from backend_servers import RedisServer, free_port, unique

from dockerconnect._digest import Digest
from dockerconnect._manifest import OCI_MANIFEST, Manifest
from dockerconnect._protocols import ManifestStore, TagRecord
from dockerconnect.errors import InvalidInput, StorageError
from dockerconnect.testing import ManifestStoreConformance, ManifestStoreFactory, random_image

pytest.importorskip("redis")
from dockerconnect.redis import RedisManifestStore


def raw_keys(server: RedisServer, prefix: str) -> list[str]:
    """Every key under ``prefix``, read with a synchronous client."""
    import redis

    with redis.Redis.from_url(server.url) as client:
        return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}*"))


class TestRedisManifestStore(ManifestStoreConformance):
    persistent = True

    @pytest.fixture
    async def manifest_store_factory(
        self, redis_server: RedisServer
    ) -> AsyncIterator[ManifestStoreFactory]:
        prefix = unique("conf") + ":"
        made: list[RedisManifestStore] = []

        def make() -> ManifestStore:
            store = RedisManifestStore(redis_server.url, prefix=prefix)
            made.append(store)
            return store

        self._server, self._prefix = redis_server, prefix
        yield make
        for store in made:
            await store.aclose()

    def manifest_store_leftovers(self, store: ManifestStore) -> Iterable[object]:
        # Only the documented keys: nothing else (locks, temporaries) stays behind.
        known = tuple(f"{self._prefix}{kind}:" for kind in ("manifests", "tags", "referrers"))
        keys = raw_keys(self._server, self._prefix)
        return [k for k in keys if not k.startswith(known) and k != f"{self._prefix}repositories"]


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisManifestStore]:
    async with RedisManifestStore(redis_server.url, prefix=unique("t") + ":") as s:
        yield s


def signature_for(subject: Manifest, *, seed: int) -> Manifest:
    """An OCI artifact manifest whose ``subject`` is ``subject``."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": str(Digest.from_bytes(b"{}")),
            "size": 2,
        },
        "layers": [],
        "subject": subject.descriptor().to_dict(),
        "annotations": {"seed": str(seed)},
    }
    return Manifest.parse(json.dumps(doc).encode(), OCI_MANIFEST)


@pytest.mark.anyio
async def test_referrers_index(store: RedisManifestStore, redis_server: RedisServer) -> None:
    image = random_image(seed=1).manifest
    first, second = signature_for(image, seed=1), signature_for(image, seed=2)
    assert await store.referrers("app", image.digest) == []
    await store.put_manifest("app", image)
    await store.put_manifest("app", first)
    await store.put_manifest("app", second)
    expected = sorted([first.referrer(), second.referrer()], key=str)
    got = await store.referrers("app", image.digest)
    assert sorted(got, key=str) == expected
    assert [d.digest for d in got] == sorted([first.digest, second.digest], key=str)
    assert got[0].artifact_type == "application/vnd.example.signature"
    assert got[0].annotations is not None
    # Per repository, like the manifests themselves.
    assert await store.referrers("other", image.digest) == []
    assert await store.delete_manifest("app", first.digest) is True
    assert await store.referrers("app", image.digest) == [second.referrer()]
    assert await store.delete_manifest("app", second.digest) is True
    assert await store.referrers("app", image.digest) == []
    assert not any(":referrers:" in key for key in raw_keys(redis_server, store.prefix))


@pytest.mark.anyio
async def test_replicas_see_each_other(redis_server: RedisServer) -> None:
    prefix = unique("shared") + ":"
    image = random_image(seed=3).manifest
    record = TagRecord(image.digest, OCI_MANIFEST, 5.0, None)
    async with (
        RedisManifestStore(redis_server.url, prefix=prefix) as one,
        RedisManifestStore(redis_server.url, prefix=prefix) as two,
    ):
        await one.put_manifest("a/b", image)
        await one.set_tag("a/b", "v1", record)
        assert await two.get_manifest("a/b", image.digest) == image
        assert await two.get_tag("a/b", "v1") == record
        assert await two.delete_tag("a/b", "v1") is True
        assert await one.tags("a/b") == []


@pytest.mark.anyio
async def test_racing_replicas_keep_the_listing_true(redis_server: RedisServer) -> None:
    # One replica deletes the only tag while another pushes a manifest; many
    # times over. The repository listing must match what is held afterwards.
    prefix = unique("race") + ":"
    image = random_image(seed=4).manifest
    record = TagRecord(image.digest, OCI_MANIFEST, 1.0, "hub")
    async with (
        RedisManifestStore(redis_server.url, prefix=prefix) as one,
        RedisManifestStore(redis_server.url, prefix=prefix) as two,
    ):
        for round_ in range(20):
            repository = f"r{round_}"
            await one.set_tag(repository, "t", record)
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.delete_tag, repository, "t")
                tg.start_soon(two.put_manifest, repository, image)
            assert await one.tags(repository) == []
        assert await two.repositories() == sorted(f"r{n}" for n in range(20))
        for round_ in range(20):
            assert await one.delete_manifest(f"r{round_}", image.digest) is True
        assert await two.repositories() == []
    assert raw_keys(redis_server, prefix) == []


@pytest.mark.anyio
async def test_more_callers_than_connections_wait_their_turn(redis_server: RedisServer) -> None:
    image = random_image(seed=7).manifest
    got: list[Manifest | None] = []
    async with RedisManifestStore(
        redis_server.url, prefix=unique("pool") + ":", max_connections=2
    ) as store:
        await store.put_manifest("app", image)

        async def get() -> None:
            got.append(await store.get_manifest("app", image.digest))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(get)
    assert got == [image] * 40


@pytest.mark.anyio
async def test_unreachable_redis_is_a_storage_error() -> None:
    async with RedisManifestStore(f"redis://127.0.0.1:{free_port()}/0") as store:
        with pytest.raises(StorageError) as info:
            await store.get_tag("app", "latest")
        assert "cannot reach Redis at redis://127.0.0.1:" in str(info.value)
        with pytest.raises(StorageError):
            await store.put_manifest("app", random_image(seed=5).manifest)


@pytest.mark.anyio
async def test_cancelled_call_leaves_the_store_usable(store: RedisManifestStore) -> None:
    image = random_image(seed=6).manifest
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.put_manifest("app", image)
    await store.put_manifest("app", image)
    assert await store.get_manifest("app", image.digest) == image


@pytest.mark.anyio
async def test_unreadable_record_is_a_storage_error(
    store: RedisManifestStore, redis_server: RedisServer
) -> None:
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.hset(f"{store.prefix}tags:app", "bad", b"not json")
    with pytest.raises(StorageError):
        await store.get_tag("app", "bad")


def test_bad_url() -> None:
    with pytest.raises(InvalidInput, match="redis://"):
        RedisManifestStore("localhost:6379")


def test_password_is_not_shown() -> None:
    store = RedisManifestStore("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in repr(store)
    assert "user:***@127.0.0.1:1" in repr(store)
