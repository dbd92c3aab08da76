"""Two commits of one tag land in the order they were asked for: an older
record never moves the tag back."""

from __future__ import annotations

import anyio
import pytest

from dockerconnect import CachingPolicy, Manifest, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect._digest import Digest
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio


class SlowFor(MemoryManifestStore):
    """``put_manifest`` of one digest waits until released (a slow fsync)."""

    def __init__(self, slow: Digest) -> None:
        super().__init__()
        self.slow = slow
        self.waiting = anyio.Event()
        self.release = anyio.Event()

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        if manifest.digest == self.slow:
            self.waiting.set()
            await self.release.wait()
        await super().put_manifest(repository, manifest)


async def test_a_moved_tag_is_not_moved_back_by_an_older_commit() -> None:
    old, new = random_image(seed=20), random_image(seed=21)
    up = FakeUpstream("up")
    up.add("app", old, tag="v1")
    counted = CountingConnector(up)
    store = SlowFor(old.manifest.digest)
    r = Resolver(
        "local",
        manifests=store,
        blobs=MemoryBlobStore(),
        connectors=[counted],
        policy=CachingPolicy(tag_ttl=0.0),
    )
    got: dict[str, Digest] = {}

    async def pull(key: str) -> None:
        got[key] = (await r.get_manifest("app", "v1")).digest

    async with r, anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            tg.start_soon(pull, "first")
            await store.waiting.wait()  # the first commit (tag -> old) is stuck
            up.add("app", new, tag="v1")  # the tag moves upstream
            # Revalidated (ttl 0): HEAD says `new`, which is fetched; its commit
            # is not slow, and must still land after the first one.
            tg.start_soon(pull, "second")
            while counted.calls["get_manifest"] < 2:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            await anyio.sleep(0.05)
            store.release.set()
    assert got == {"first": old.manifest.digest, "second": new.manifest.digest}
    record = await store.get_tag("app", "v1")
    assert record is not None
    assert record.digest == new.manifest.digest, "tag moved back to the older manifest"
