"""Two resolvers (two serve workers) over one FilesystemManifestStore root:
a manifest answered by one is already in the store for the other."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from dockerconnect import FilesystemManifestStore, MemoryBlobStore, Resolver
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio


async def test_a_manifest_served_by_one_worker_is_local_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEAD/GET by tag on worker 1, then GET by digest on worker 2 (a client's
    next request, another worker under --workers N): before the change the
    first answer came after the manifest was in the shared store; now the
    second worker asks the upstream again (a second rate-limited GET)."""
    real = os.fsync

    def slow_fsync(fd: int) -> None:  # a disk that takes 200 ms to sync a file
        if stat.S_ISREG(os.fstat(fd).st_mode):
            time.sleep(0.2)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    image = random_image(seed=9)
    up = FakeUpstream("up")
    up.add("app", image, tag="v1")
    counted = CountingConnector(up)
    root = tmp_path / "m"

    def worker() -> Resolver:
        return Resolver(
            "local",
            manifests=FilesystemManifestStore(root),
            blobs=MemoryBlobStore(),
            connectors=[counted],
        )

    async with worker() as w1, worker() as w2:
        await w1.get_manifest("app", "v1")
        await w2.get_manifest("app", str(image.manifest.digest))
    assert counted.calls == {"get_manifest": 1}


async def test_a_tag_served_by_one_worker_can_be_deleted_through_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET tag on worker 1, then DELETE tag on worker 2: now worker 2 answers
    'unknown' (the tag is only in worker 1's memory) and worker 1's commit then
    writes the tag the client tried to delete."""
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            time.sleep(0.2)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    image = random_image(seed=10)
    up = FakeUpstream("up")
    up.add("app", image, tag="v1")
    root = tmp_path / "m"

    def worker() -> Resolver:
        return Resolver(
            "local",
            manifests=FilesystemManifestStore(root),
            blobs=MemoryBlobStore(),
            connectors=[up],
        )

    async with worker() as w1, worker() as w2:
        await w1.get_manifest("app", "v1")
        await w2.delete_manifest("app", "v1")  # ManifestUnknown after the change
    assert await FilesystemManifestStore(root).get_tag("app", "v1") is None
