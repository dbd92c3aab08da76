"""What a cold blob fetch over a filesystem store does before its first byte:
one look in the store once it may fetch, and nothing written to its
in-progress file unless another process follows it."""

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
    syncing, release = threading.Event(), threading.Event()
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            syncing.set()
            release.wait(GUARD)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
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
