"""A verified blob reaches its readers before its durable commit (fsync, rename);
until the commit ends the next request joins the same fetch; a failed commit
costs the cached copy, never the readers' bytes."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from _resolve_helpers import read_all

from dockerconnect import (
    CachingPolicy,
    FilesystemBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect.errors import StorageError
from dockerconnect.testing import CountingConnector, FakeUpstream, random_blob, random_image

pytestmark = pytest.mark.anyio

#: Well past the flight's in-memory tail: a late joiner reads back from the file.
SIZE = 9 * 1024 * 1024 + 5
#: A guard against a hang, never a timing assertion.
GUARD = 60


@contextmanager
def file_fsync(monkeypatch: pytest.MonkeyPatch, instead: Callable[[], None]) -> Iterator[None]:
    """``os.fsync`` of regular files (the blob's temporary file) runs ``instead``
    first; directories sync as usual."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            instead()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield


def resolver(tmp_path: Path, counted: CountingConnector, **kwargs: object) -> Resolver:
    return Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=FilesystemBlobStore(tmp_path / "blobs"),
        connectors=[counted],
        **kwargs,  # type: ignore[arg-type]
    )


def blob_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "blobs" / "blobs").rglob("*") if p.is_file()]


async def test_readers_get_the_last_byte_while_the_commit_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_blob(SIZE, 3)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    syncing, release = threading.Event(), threading.Event()

    def stuck() -> None:
        syncing.set()
        release.wait(GUARD)

    with file_fsync(monkeypatch, stuck):
        try:
            async with resolver(tmp_path, counted) as r:
                with anyio.fail_after(GUARD):
                    assert await read_all(await r.open_blob("app", digest)) == data
                    # The commit is stuck in fsync: nothing under the blob's name,
                    # and the next request joins the same fetch (read back from
                    # the writer's file), not the upstream.
                    assert await anyio.to_thread.run_sync(syncing.wait, GUARD)
                    assert await r.blobs.stat(digest) is None and blob_files(tmp_path) == []
                    joined = await r.open_blob("app", digest)
                    assert joined.source == "up"
                    assert await read_all(joined) == data
                    assert counted.opened[digest] == 1
                    assert r.stats.joined_waiters == 1
                release.set()
                await r.wait_idle()
                local = await r.open_blob("app", digest)
                assert local.source == "local"
                assert await read_all(local) == data
                assert counted.opened[digest] == 1
        finally:
            release.set()
    assert len(blob_files(tmp_path)) == 1
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


async def test_closing_waits_for_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_blob(2 * 1024 * 1024, 4)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    async with resolver(tmp_path, CountingConnector(upstream)) as r:
        assert await read_all(await r.open_blob("app", digest)) == data
    # Left right after the last byte: the commit still finished.
    assert [p.name for p in blob_files(tmp_path)] == [digest.hex]
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


async def test_a_failed_commit_keeps_the_readers_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_blob(SIZE, 5)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with file_fsync(monkeypatch, full):
        async with resolver(tmp_path, counted) as r:
            assert await read_all(await r.open_blob("app", digest)) == data
            await r.wait_idle()
            # Not cached, nothing half-written, and the next request fetches again.
            assert await r.blobs.stat(digest) is None
            assert blob_files(tmp_path) == []
            assert os.listdir(tmp_path / "blobs" / "tmp") == []
            assert await read_all(await r.open_blob("app", digest)) == data
            assert counted.opened[digest] == 2


async def test_a_failed_commit_fails_a_pinning_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = random_image(seed=51, layers=1, layer_size=3 * 1024 * 1024, layer_format="raw")
    upstream = FakeUpstream("up")
    upstream.add("app", image)

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with file_fsync(monkeypatch, full):
        async with resolver(
            tmp_path, CountingConnector(upstream), policy=CachingPolicy(pin_on_push=True)
        ) as r:
            with pytest.raises(StorageError, match="No space left"):
                await r.push_manifest(
                    "app", image.manifest.data, media_type=image.manifest.media_type, tag="v1"
                )
            assert blob_files(tmp_path) == []
            assert os.listdir(tmp_path / "blobs" / "tmp") == []
