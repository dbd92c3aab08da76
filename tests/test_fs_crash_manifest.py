"""A process killed while a cold manifest's commit syncs leaves each name
absent or whole.

The child asks a Resolver over a ``FilesystemManifestStore`` for a manifest by
tag, twice at once, and the store's ``fsync`` of the Nth regular file never
returns: the client is not answered until the commit ends, the second request
is held on the same verified copy (the upstream is asked once), and then the
parent kills the child. N=1 sticks the manifest's own file; later ones stick
the files written after it (its cached mark, the tag).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio.to_thread
import pytest

from _kill import child, lines
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemManifestStore

CHILD = """
import os, stat, sys, threading
import anyio
from dockerconnect import MemoryBlobStore, Resolver
from dockerconnect._filesystem import FilesystemManifestStore
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

root, stuck_at = sys.argv[1], int(sys.argv[2])
image = random_image(seed=81)
upstream = FakeUpstream("up")
upstream.add("app", image, tag="v1")
counted = CountingConnector(upstream)
print(image.manifest.digest, flush=True)

real_fsync = os.fsync
synced = []
printed = []

def stuck_fsync(fd):
    # Directories sync as usual; the Nth regular file never ends syncing.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return real_fsync(fd)
    synced.append(fd)
    if len(synced) < stuck_at:
        return real_fsync(fd)
    printed.append("syncing")
    print("syncing", flush=True)
    threading.Event().wait()

async def main():
    manifests = FilesystemManifestStore(root)
    os.fsync = stuck_fsync
    async with Resolver("local", manifests=manifests, blobs=MemoryBlobStore(),
                        connectors=[counted]) as resolver:
        async with anyio.create_task_group() as tg:
            tg.start_soon(resolver.get_manifest, "app", "v1")
            tg.start_soon(resolver.get_manifest, "app", "v1")
            while "syncing" not in printed:
                await anyio.sleep(0.01)
            print("asked", counted.calls["get_manifest"], flush=True)
            await anyio.sleep(3600)

anyio.run(main)
"""


def serve_and_kill(root: Path, stuck_at: int) -> tuple[Digest, list[str]]:
    """Run the child until a commit is stuck with both requests waiting on it,
    SIGKILL it; the manifest's digest and what the child printed."""
    with child(CHILD, str(root), str(stuck_at)) as (process, digest):
        printed = lines(process, 2, what="the child's commit never stuck")
    return digest, printed


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("stuck_at", [1, 2, 3])
@pytest.mark.anyio
async def test_kill_while_a_cold_manifest_commits(tmp_path: Path, stuck_at: int) -> None:
    root = tmp_path / "store"
    digest, lines = await anyio.to_thread.run_sync(serve_and_kill, root, stuck_at)
    # Two requests waited on one stuck commit; the upstream was asked once.
    assert lines == ["syncing", "asked 1"]

    store = FilesystemManifestStore(root)
    assert os.listdir(root / "tmp") == []  # the stuck writer's file is gone
    manifest = await store.get_manifest("app", digest)  # verified if there
    record = await store.get_tag("app", "v1")
    if stuck_at == 1:
        # Killed while the manifest's own file synced: nothing under any name.
        assert manifest is None and record is None
        assert not any(p.is_file() for p in (root / "repositories").rglob("*"))
    # Whole or absent; a tag never names a manifest that is not there.
    assert manifest is None or manifest.digest == digest
    if record is not None:
        assert record.digest == digest and manifest is not None
