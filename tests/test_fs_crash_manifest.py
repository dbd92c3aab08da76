"""A process killed after a cold manifest was verified and served, but before
its durable commit (fsync, rename) finished, leaves each name absent or whole.

The child serves a manifest by tag through a Resolver into a
``FilesystemManifestStore`` whose ``fsync`` of the Nth regular file never
returns: the client is answered while that commit is stuck, a second request
is answered from the same verified copy without asking the upstream, and then
the parent kills the child. N=1 sticks the manifest's own file; later ones
stick the files written after it (its cached mark, the tag).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio.to_thread
import pytest

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

def stuck_fsync(fd):
    # Directories sync as usual; the Nth regular file never ends syncing.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return real_fsync(fd)
    synced.append(fd)
    if len(synced) < stuck_at:
        return real_fsync(fd)
    print("syncing", flush=True)
    threading.Event().wait()

async def main():
    manifests = FilesystemManifestStore(root)
    os.fsync = stuck_fsync
    async with Resolver("local", manifests=manifests, blobs=MemoryBlobStore(),
                        connectors=[counted]) as resolver:
        first = await resolver.get_manifest("app", "v1")
        again = await resolver.get_manifest("app", "v1")
        assert first.data == again.data == image.manifest.data
        print("served", counted.calls["get_manifest"], flush=True)
        await anyio.sleep(3600)

anyio.run(main)
"""


def serve_and_kill(root: Path, stuck_at: int) -> tuple[Digest, list[str]]:
    """Run the child until it has served the manifest twice and a commit is
    stuck, SIGKILL it; the manifest's digest and what the child printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(stuck_at)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines: list[str] = []
    try:
        assert child.stdout is not None
        digest = Digest.parse(child.stdout.readline().strip())
        printed: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [printed.put(line) for line in child.stdout or ()], daemon=True
        ).start()
        deadline = time.monotonic() + 120
        # "served" may come before "syncing": the commit runs in the background.
        while len(lines) < 2:
            try:
                line = printed.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the child never served the manifest: {lines}") from None
            lines.append(line.strip())
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return digest, lines


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("stuck_at", [1, 2, 3])
@pytest.mark.anyio
async def test_kill_between_serving_a_manifest_and_its_durable_commit(
    tmp_path: Path, stuck_at: int
) -> None:
    root = tmp_path / "store"
    digest, lines = await anyio.to_thread.run_sync(serve_and_kill, root, stuck_at)
    # Served twice while a commit was stuck; the upstream was asked once.
    assert sorted(lines) == ["served 1", "syncing"]

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
