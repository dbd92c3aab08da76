"""A cached manifest's commit that fails, or that retention runs right after:
what is kept, and the resolver goes on."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from dockerconnect import (
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
    RetentionPolicy,
)
from dockerconnect.testing import FakeUpstream, random_image

pytestmark = pytest.mark.anyio


async def test_prune_right_after_a_cold_pull_removes_the_cached_manifest(tmp_path: Path) -> None:
    """Before the change, get_manifest returned after the manifest was in the store
    and marked cached, so a prune() that followed (max_bytes=0) removed it."""
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
    async def put_manifest(self, repository, manifest):  # type: ignore[no-untyped-def]
        raise RuntimeError("store bug")


async def test_a_non_dockerconnect_error_in_a_commit_does_not_kill_the_resolver() -> None:
    """A store raising something other than DockerConnectError inside the
    background commit propagates into the resolver's task group: every other
    background fetch is cancelled and `async with` exits with an ExceptionGroup."""
    a, b = random_image(seed=6), random_image(seed=7)
    up = FakeUpstream("up")
    up.add("app", a, tag="a")
    up.add("app", b, tag="b")
    r = Resolver("local", manifests=Broken(), blobs=MemoryBlobStore(), connectors=[up])
    errors = []
    try:
        async with r:
            try:
                await r.get_manifest("app", "a")  # now served; its commit raises later
            except RuntimeError:
                pass  # before the change: this request failed
            await anyio.sleep(0.05)  # now: the caller's own body is cancelled here
            try:
                await r.get_manifest("app", "b")
            except RuntimeError:
                pass
    except BaseException as exc:
        errors.append(exc)  # now: ExceptionGroup([RuntimeError])
    assert not errors, errors
