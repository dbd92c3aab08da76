"""What a cold blob fetch over a filesystem store does before its first byte:
one look in the store once it may fetch, nothing written to its in-progress
file unless another process follows it, and a small blob hashed as it
arrives and written only by its commit."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from _resolve_helpers import read_all

from dockerconnect import Descriptor, Digest, FilesystemBlobStore, MemoryManifestStore, Resolver
from dockerconnect._fsfetch import FilesystemFetches
from dockerconnect.errors import DigestMismatch, SizeInvalid
from dockerconnect.testing import CountingConnector, FakeUpstream, random_blob

pytestmark = pytest.mark.anyio

GUARD = 60


class CountingStore(FilesystemBlobStore):
    """A filesystem blob store that counts its ``stat`` calls."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.stats = 0

    async def stat(self, digest: Digest) -> Descriptor | None:
        self.stats += 1
        return await super().stat(digest)


def held_fsyncs(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make each ``fsync`` of a regular file set ``syncing`` and then wait for
    ``release`` (at most ``GUARD`` seconds): a commit held in its slow part."""
    syncing, release = threading.Event(), threading.Event()
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            syncing.set()
            release.wait(GUARD)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return syncing, release


def size_of(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


async def test_a_cold_fetch_looks_in_the_store_once_and_writes_no_header_unfollowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_blob(3 * 1024 * 1024 + 7, 9)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    store = CountingStore(tmp_path / "blobs")
    syncing, release = held_fsyncs(monkeypatch)
    in_progress = Path(FilesystemFetches(store.root).path(digest))
    try:
        async with Resolver(
            "local", manifests=MemoryManifestStore(), blobs=store, connectors=[counted]
        ) as r:
            with anyio.fail_after(GUARD):
                assert await read_all(await r.open_blob("app", digest)) == data
                assert await anyio.to_thread.run_sync(syncing.wait, GUARD)
                # The fetch still holds its in-progress file (its commit is
                # stuck), and nobody followed it: nothing was written there.
                assert size_of(in_progress) == 0
                # One look in the store, by the gate, once it led the fetch.
                assert store.stats == 1
            release.set()
            await r.wait_idle()
            assert counted.opened[digest] == 1
    finally:
        release.set()
    assert size_of(in_progress) is None
    assert await store.stat(digest) is not None


async def test_a_small_blob_is_held_in_memory_until_its_commit(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = random_blob(1024 * 1024 + 548, 10)  # bench_peer's small layers' size
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data[: 1024 * 1024])
        await writer.write(data[1024 * 1024 :])
        # Hashed as written, nothing on disk yet: not even a temporary file.
        assert tmp_files(tmp_path) == []
        await writer.commit()
    assert tmp_files(tmp_path) == []
    local = await store.open(digest)
    assert local is not None and await read_all(local) == data


async def test_a_small_blob_with_wrong_bytes_leaves_nothing(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    data = random_blob(300 * 1024, 11)
    digest = Digest.from_bytes(data)
    with pytest.raises(DigestMismatch):
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data[:-1] + b"x")
            await writer.commit()
    with pytest.raises(SizeInvalid):
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data + b"x")  # fails on the write that overflows
    assert tmp_files(tmp_path) == []
    assert await store.stat(digest) is None


async def test_a_reader_joining_a_small_blob_while_it_commits_gets_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_blob(1024 * 1024 + 548, 12)
    upstream = FakeUpstream("up")
    digest = upstream.add_blob("app", data)
    counted = CountingConnector(upstream)
    syncing, release = held_fsyncs(monkeypatch)
    try:
        async with Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=FilesystemBlobStore(tmp_path / "blobs"),
            connectors=[counted],
        ) as r:
            with anyio.fail_after(GUARD):
                assert await read_all(await r.open_blob("app", digest)) == data
                assert await anyio.to_thread.run_sync(syncing.wait, GUARD)
                joined = await r.open_blob("app", digest)
                assert joined.source == "up"
                assert await read_all(joined) == data
            release.set()
            await r.wait_idle()
            assert await read_all(await r.open_blob("app", digest)) == data
            assert counted.opened[digest] == 1
    finally:
        release.set()


def tmp_files(tmp_path: Path) -> list[str]:
    return os.listdir(tmp_path / "blobs" / "tmp")
