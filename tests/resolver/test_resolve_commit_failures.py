"""A cached manifest's commit that fails, or that retention runs right after:
what is kept, and the resolver goes on."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from dockerconnect import (
    FilesystemBlobStore,
    FilesystemManifestStore,
    Manifest,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
    RetentionPolicy,
)
from dockerconnect.testing import FakeUpstream, random_image

pytestmark = pytest.mark.anyio


async def test_prune_right_after_a_cold_pull_removes_the_cached_manifest(tmp_path: Path) -> None:
    """get_manifest answers once the manifest is in the store and marked cached,
    and prune() waits for commits in flight: a prune that follows (max_bytes=0)
    removes it."""
    image = random_image(seed=5)
    up = FakeUpstream("up")
    up.add("app", image, tag="v1")
    r = Resolver(
        "local",
        manifests=FilesystemManifestStore(tmp_path / "m"),
        blobs=FilesystemBlobStore(tmp_path / "b"),
        connectors=[up],
        retention=RetentionPolicy(max_bytes=0, interval=None),
    )
    async with r:
        await r.get_manifest("app", "v1")
        report = await r.prune()
        await r.wait_idle()
        left = await r.manifests.get_manifest("app", image.manifest.digest)
    assert report.removed_manifests == 1, report
    assert left is None


class Broken(MemoryManifestStore):
    """A store with a bug: ``put_manifest`` raises what no store should."""

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        raise RuntimeError("store bug")


async def test_a_non_dockerconnect_error_in_a_commit_does_not_end_the_resolver() -> None:
    """A commit that raises something other than a DockerConnectError is logged
    like any failed commit: the client still gets the verified manifest, other
    requests go on, and ``async with`` ends cleanly."""
    a, b = random_image(seed=6), random_image(seed=7)
    up = FakeUpstream("up")
    up.add("app", a, tag="a")
    up.add("app", b, tag="b")
    r = Resolver("local", manifests=Broken(), blobs=MemoryBlobStore(), connectors=[up])
    async with r:
        assert (await r.get_manifest("app", "a")).digest == a.manifest.digest
        await anyio.sleep(0.05)
        assert (await r.get_manifest("app", "b")).digest == b.manifest.digest
        await r.wait_idle()
