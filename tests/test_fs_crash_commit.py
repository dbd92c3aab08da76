"""A process killed after a blob was verified and served, but before its durable
commit (fsync, rename) finished, leaves nothing under the blob's name.

The child serves a blob through a Resolver into a ``FilesystemBlobStore``
whose ``fsync`` never returns: the reader gets every (verified) byte while
the commit is stuck, a second reader joins the same fetch, and then the
parent kills the child.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio.to_thread
import pytest

from _kill import child, lines
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore

BLOB_SIZE = 6 * 1024 * 1024 + 123

CHILD = """
import os, stat, sys, threading
import anyio
from dockerconnect import Resolver
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore
from dockerconnect._memory import MemoryManifestStore
from dockerconnect.testing import CountingConnector, FakeUpstream

root, size = sys.argv[1], int(sys.argv[2])
data = os.urandom(size)
upstream = FakeUpstream("up")
digest = upstream.add_blob("app", data)
counted = CountingConnector(upstream)
print(digest, flush=True)

real_fsync = os.fsync

def stuck_fsync(fd):
    # Directories sync as usual; the blob's file (the durable commit) never
    # ends syncing, until SIGKILL.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return real_fsync(fd)
    print("syncing", flush=True)
    threading.Event().wait()

async def read(resolver):
    stream = await resolver.open_blob("app", digest)
    async with stream:
        return await stream.read()

async def main():
    blobs = FilesystemBlobStore(root)
    os.fsync = stuck_fsync
    async with Resolver("local", manifests=MemoryManifestStore(), blobs=blobs,
                        connectors=[counted]) as resolver:
        assert await read(resolver) == data
        # Verified and served; the commit is stuck: the next request joins
        # the same fetch rather than asking the upstream again.
        assert await read(resolver) == data
        print("served", counted.opened[digest], flush=True)
        await anyio.sleep(3600)

anyio.run(main)
"""


def serve_and_kill(root: Path) -> tuple[Digest, list[str]]:
    """Run the child until it has served the blob twice and its commit is stuck,
    SIGKILL it; its digest and what it printed."""
    with child(CHILD, str(root), str(BLOB_SIZE)) as (process, digest):
        # "served" may come before "syncing": the commit runs in the background.
        printed = lines(process, 2, what="the child never served the blob")
    return digest, printed


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.anyio
async def test_kill_between_verification_and_durable_commit(tmp_path: Path) -> None:
    root = tmp_path / "store"
    digest, lines = await anyio.to_thread.run_sync(serve_and_kill, root)
    # The commit had begun (and was stuck in fsync) when both readers had
    # every byte; one upstream transfer served both.
    assert sorted(lines) == ["served 1", "syncing"]

    # Nothing is visible under the blob's name: only the writer's temporary file.
    assert not any(p.is_file() for p in (root / "blobs").rglob("*"))
    leftovers = os.listdir(root / "tmp")
    assert len(leftovers) == 1
    assert (root / "tmp" / leftovers[0]).stat().st_size == BLOB_SIZE

    store = FilesystemBlobStore(root)
    assert os.listdir(root / "tmp") == []
    assert await store.stat(digest) is None
    assert await store.open(digest) is None
