"""Two commits of one tag land in the order they were asked for: an older
record never moves the tag back."""

from __future__ import annotations

import anyio
import pytest

from dockerconnect import CachingPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.testing import FakeUpstream, random_image

pytestmark = pytest.mark.anyio


class SlowFirst(MemoryManifestStore):
    """put_manifest of one digest waits (a slow fsync of the first commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = None
        self.release = anyio.Event()

    async def put_manifest(self, repository, manifest):  # type: ignore[no-untyped-def]
        if manifest.digest == self.slow:
            await self.release.wait()
        await super().put_manifest(repository, manifest)


async def test_a_moved_tag_is_not_moved_back_by_an_older_commit() -> None:
    old, new = random_image(seed=20), random_image(seed=21)
    up = FakeUpstream("up")
    up.add("app", old, tag="v1")
    store = SlowFirst()
    store.slow = old.manifest.digest
    r = Resolver(
        "local",
        manifests=store,
        blobs=MemoryBlobStore(),
        connectors=[up],
        policy=CachingPolicy(tag_ttl=0.0),
    )

    async def release_later() -> None:
        await anyio.sleep(0.3)  # the first commit's slow sync
        store.release.set()

    async with r, anyio.create_task_group() as tg:
        tg.start_soon(release_later)
        assert (await r.get_manifest("app", "v1")).digest == old.manifest.digest
        up.add("app", new, tag="v1")  # the tag moves upstream
        # Revalidated (ttl 0): HEAD says `new`, which is fetched and served.
        assert (await r.get_manifest("app", "v1")).digest == new.manifest.digest
        await anyio.sleep(0.5)  # both commits have ended
        await r.wait_idle()
    record = await store.get_tag("app", "v1")
    assert record is not None
    assert record.digest == new.manifest.digest, "tag moved back to the older manifest"
