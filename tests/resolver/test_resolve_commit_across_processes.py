"""Two resolvers (two serve workers) over one FilesystemManifestStore root:
a manifest answered by one is already in the store for the other."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from dockerconnect import Connector, FilesystemManifestStore, MemoryBlobStore, Resolver
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that takes 200 ms to sync a file (directories sync as usual)."""
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            time.sleep(0.2)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)


def worker(root: Path, connector: Connector) -> Resolver:
    """One serve worker's resolver over the shared manifest root."""
    return Resolver(
        "local",
        manifests=FilesystemManifestStore(root),
        blobs=MemoryBlobStore(),
        connectors=[connector],
    )


@pytest.mark.usefixtures("slow_disk")
async def test_a_manifest_served_by_one_worker_is_local_to_the_next(tmp_path: Path) -> None:
    """GET by tag on worker 1, then GET by digest on worker 2 (a client's next
    request, sent to another worker under --workers N): the first answer comes
    once the manifest is in the shared store, so the second worker does not
    ask the upstream again."""
    image = random_image(seed=9)
    up = FakeUpstream("up")
    up.add("app", image, tag="v1")
    counted = CountingConnector(up)
    root = tmp_path / "m"
    async with worker(root, counted) as w1, worker(root, counted) as w2:
        await w1.get_manifest("app", "v1")
        await w2.get_manifest("app", str(image.manifest.digest))
    assert counted.calls == {"get_manifest": 1}


@pytest.mark.usefixtures("slow_disk")
async def test_a_tag_served_by_one_worker_can_be_deleted_through_another(
    tmp_path: Path,
) -> None:
    """GET by tag on worker 1, then DELETE of the tag on worker 2: the tag is in
    the shared store by the first answer, so the delete finds it and no later
    commit writes it back."""
    image = random_image(seed=10)
    up = FakeUpstream("up")
    up.add("app", image, tag="v1")
    root = tmp_path / "m"
    async with worker(root, up) as w1, worker(root, up) as w2:
        await w1.get_manifest("app", "v1")
        await w2.delete_manifest("app", "v1")
    assert await FilesystemManifestStore(root).get_tag("app", "v1") is None
