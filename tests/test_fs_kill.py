"""A process killed while ingesting leaves nothing visible, and the next open
removes what it left behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio.to_thread
import pytest

from _kill import child
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore

BLOB_SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024
#: Kill once this much is on disk: well into the blob, far from its end.
KILL_AFTER = 8 * 1024 * 1024

# The child writes the same random MiB 64 times, pausing between writes so
# the parent can kill it midway; its digest is the real digest of that content.
CHILD = """
import hashlib, os, sys
import anyio
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore

root, size, chunk_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = os.urandom(chunk_size)
h = hashlib.sha256()
for _ in range(size // chunk_size):
    h.update(chunk)
digest = Digest("sha256", h.hexdigest())
print(digest, flush=True)

async def main():
    store = FilesystemBlobStore(root)
    async with store.ingest(digest, size) as writer:
        for _ in range(size // chunk_size):
            await writer.write(chunk)
            await anyio.sleep(0.05)
        await writer.commit()

anyio.run(main)
"""


def ingest_and_kill(root: Path) -> tuple[Digest, int]:
    """Run the child, SIGKILL it midway; its digest and the size of its temp file."""
    with child(CHILD, str(root), str(BLOB_SIZE), str(CHUNK)) as (process, digest):
        deadline = time.monotonic() + 60
        written = 0
        while written < KILL_AFTER:
            assert process.poll() is None, "the child ended before it could be killed"
            assert time.monotonic() < deadline, "the child never wrote its temporary file"
            temps = list((root / "tmp").glob("*")) if (root / "tmp").is_dir() else []
            written = max((p.stat().st_size for p in temps), default=0)
            time.sleep(0.01)
    return digest, written


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.anyio
async def test_killed_ingest_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    digest, written = await anyio.to_thread.run_sync(ingest_and_kill, root)
    assert KILL_AFTER <= written < BLOB_SIZE

    # The dead writer's temporary file is all there is; no blob is visible.
    leftovers = os.listdir(root / "tmp")
    assert len(leftovers) == 1
    assert not any(p.is_file() for p in (root / "blobs").rglob("*"))

    store = FilesystemBlobStore(root)
    assert os.listdir(root / "tmp") == []
    assert await store.stat(digest) is None
    assert await store.open(digest) is None

    # The store works as usual afterwards.
    data = os.urandom(3 * CHUNK + 1)
    fresh = Digest.from_bytes(data)
    async with store.ingest(fresh, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    stream = await store.open(fresh, offset=CHUNK)
    assert stream is not None
    async with stream:
        assert await stream.read() == data[CHUNK:]
    assert os.listdir(root / "tmp") == []
