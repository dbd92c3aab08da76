"""The shipped stores: both conformance suites on all four backends, plus what
only the filesystem stores promise (layout, crash leftovers, full disks, roots)."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from dockerconnect import _fsroot, _fsusage
from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore, FilesystemManifestStore
from dockerconnect._manifest import OCI_MANIFEST
from dockerconnect._memory import MemoryBlobStore, MemoryManifestStore
from dockerconnect._protocols import BlobStore, ManifestStore, ReferrersIndex, TagRecord
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import (
    DigestInvalid,
    DigestMismatch,
    InvalidInput,
    NameInvalid,
    StorageError,
    TagInvalid,
)
from dockerconnect.testing import (
    BlobStoreConformance,
    BlobStoreFactory,
    ManifestStoreConformance,
    ManifestStoreFactory,
    random_artifact,
    random_blob,
    random_image,
)
from dockerconnect.testing._store_conformance import INVALID_DIGESTS, INVALID_NAMES, INVALID_TAGS


def open_files_under(root: Path) -> list[str]:
    """Paths under ``root`` this process holds open (Linux ``/proc``; else nothing)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return []
    held = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{root}{os.sep}"):
            held.append(target)
    return held


def filesystem_leftovers(root: Path) -> list[str]:
    """Temporary files and open handles a filesystem store left under ``root``."""
    temps = [f"tmp/{name}" for name in os.listdir(root / "tmp")]
    return temps + [f"open: {path}" for path in open_files_under(root)]


def snapshot(top: Path) -> set[str]:
    """Every path under ``top``, relative to it."""
    return {str(p.relative_to(top)) for p in top.rglob("*")}


# --- the conformance suites on every shipped backend --------------------------


class TestMemoryBlobStore(BlobStoreConformance):
    @pytest.fixture
    def blob_store_factory(self) -> BlobStoreFactory:
        store = MemoryBlobStore()
        return lambda: store


class TestMemoryManifestStore(ManifestStoreConformance):
    @pytest.fixture
    def manifest_store_factory(self) -> ManifestStoreFactory:
        store = MemoryManifestStore()
        return lambda: store


class TestFilesystemBlobStore(BlobStoreConformance):
    persistent = True

    @pytest.fixture
    def blob_store_factory(self, tmp_path: Path) -> BlobStoreFactory:
        return lambda: FilesystemBlobStore(tmp_path / "store")

    def blob_store_leftovers(self, store: BlobStore) -> Iterable[object]:
        assert isinstance(store, FilesystemBlobStore)
        return filesystem_leftovers(store.root)


class TestFilesystemManifestStore(ManifestStoreConformance):
    persistent = True

    @pytest.fixture
    def manifest_store_factory(self, tmp_path: Path) -> ManifestStoreFactory:
        # An async factory: the constructor's blocking I/O goes to a thread.
        async def make() -> ManifestStore:
            return await anyio.to_thread.run_sync(FilesystemManifestStore, tmp_path / "store")

        return make

    def manifest_store_leftovers(self, store: ManifestStore) -> Iterable[object]:
        assert isinstance(store, FilesystemManifestStore)
        return filesystem_leftovers(store.root)


# --- filesystem: layout ---------------------------------------------------------


@pytest.mark.anyio
async def test_documented_layout(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path)
    manifests = FilesystemManifestStore(tmp_path)
    data = random_blob(1000, 1)
    digest = Digest.from_bytes(data)
    async with blobs.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    blob_file = tmp_path / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    assert blob_file.read_bytes() == data
    assert blobs.blob_path(digest) == blob_file

    manifest = random_image(seed=1).manifest
    record = TagRecord(manifest.digest, OCI_MANIFEST, 12.5, "hub")
    await manifests.put_manifest("a/b", manifest)
    await manifests.set_tag("a/b", "v1", record)
    repo = tmp_path / "repositories" / "a" / "b"
    content = (repo / "_manifests" / "sha256" / manifest.digest.hex).read_bytes()
    assert content == manifest.media_type.encode() + b"\n" + manifest.data
    assert json.loads((repo / "_tags" / "v1.json").read_text()) == {
        "digest": str(manifest.digest),
        "media_type": OCI_MANIFEST,
        "confirmed_at": 12.5,
        "source": "hub",
    }
    assert os.listdir(tmp_path / "tmp") == []
    assert sorted(os.listdir(tmp_path)) == ["blobs", "repositories", "tmp", "usage"]
    assert os.listdir(tmp_path / "usage" / "sha256") == [f"{digest.hex[:2]}.lock"]


@pytest.mark.parametrize("kind", [str, Path])
def test_root_is_created(tmp_path: Path, kind: Callable[[str], str | Path]) -> None:
    root = tmp_path / "deep" / "er"
    store = FilesystemBlobStore(kind(str(root)))
    assert store.root == root
    assert (root / "tmp").is_dir()
    FilesystemManifestStore(kind(str(root)))


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError) as info:
        FilesystemBlobStore(tmp_path / "file")
    assert isinstance(info.value.__cause__, OSError)


# --- filesystem: leftovers of dead writers ----------------------------------------


@pytest.mark.parametrize("store_type", [FilesystemBlobStore, FilesystemManifestStore])
def test_leftovers_removed_on_open(tmp_path: Path, store_type: Callable[[Path], object]) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "0123.tmp").write_bytes(b"half a blob")
    (tmp_path / "tmp" / "stray").write_bytes(b"")
    store_type(tmp_path)
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.anyio
async def test_live_writer_survives_another_open(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(2 * CHUNK_SIZE, 2)
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data[:CHUNK_SIZE])
        # Another instance (or process) opening the same root must not take
        # the file from under a writer that is still alive.
        FilesystemBlobStore(tmp_path)
        FilesystemManifestStore(tmp_path)
        assert len(os.listdir(tmp_path / "tmp")) == 1
        await writer.write(data[CHUNK_SIZE:])
        await writer.commit()
    assert await store.stat(digest) is not None
    assert os.listdir(tmp_path / "tmp") == []


# --- filesystem: concurrency -------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_writers_across_instances(tmp_path: Path) -> None:
    data = random_blob(3 * CHUNK_SIZE + 9, 3)
    digest = Digest.from_bytes(data)
    stores = [FilesystemBlobStore(tmp_path) for _ in range(4)]

    async def ingest(store: FilesystemBlobStore) -> None:
        async with store.ingest(digest, len(data)) as writer:
            for start in range(0, len(data), CHUNK_SIZE // 2):
                await writer.write(data[start : start + CHUNK_SIZE // 2])
            await writer.commit()

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(ingest, store)
    shard = tmp_path / "blobs" / "sha256" / digest.hex[:2]
    assert os.listdir(shard) == [digest.hex]
    assert (shard / digest.hex).read_bytes() == data
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_stream_outlives_delete(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(2 * CHUNK_SIZE, 4)
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    stream = await store.open(digest)
    assert stream is not None
    async with stream:
        assert await store.delete(digest) is True
        assert await stream.read() == data
    assert open_files_under(tmp_path) == []


# --- filesystem: faults ----------------------------------------------------------------


def _full_disk(fd: int, data: bytes) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.anyio
async def test_full_disk_during_ingest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(3 * CHUNK_SIZE, 5)
    digest = Digest.from_bytes(data)
    monkeypatch.setattr(_fsroot, "write_all", _full_disk)
    with pytest.raises(StorageError) as info:
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert "No space left on device" in str(info.value)
    assert str(tmp_path) not in str(info.value)
    assert await store.stat(digest) is None
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_full_disk_after_small_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small writes are coalesced: the failure surfaces at the flush in commit.
    store = FilesystemBlobStore(tmp_path)
    data = b"small" * 100
    digest = Digest.from_bytes(data)
    monkeypatch.setattr(_fsroot, "write_all", _full_disk)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        with pytest.raises(StorageError):
            await writer.commit()
        assert filesystem_leftovers(tmp_path) == []
    assert await store.stat(digest) is None


@pytest.mark.anyio
async def test_full_disk_at_publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(1000, 6)
    digest = Digest.from_bytes(data)

    def no_room_for_directories(path: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(_fsroot, "make_dirs", no_room_for_directories)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        with pytest.raises(StorageError):
            await writer.commit()
    assert await store.stat(digest) is None
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_full_disk_writing_a_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FilesystemManifestStore(tmp_path)
    manifest = random_image(seed=7).manifest
    monkeypatch.setattr(_fsroot, "write_all", _full_disk)
    with pytest.raises(StorageError):
        await store.set_tag("app", "v1", TagRecord(manifest.digest, OCI_MANIFEST, 1.0))
    with pytest.raises(StorageError):
        await store.put_manifest("app", manifest)
    monkeypatch.undo()
    assert await store.get_tag("app", "v1") is None
    assert await store.tags("app") is None
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
@pytest.mark.anyio
async def test_permission_denied(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    (tmp_path / "tmp").chmod(0o500)
    try:
        with pytest.raises(StorageError):
            async with store.ingest(Digest.from_bytes(b"x"), 1) as writer:
                await writer.write(b"x")
    finally:
        (tmp_path / "tmp").chmod(0o700)


@pytest.mark.anyio
async def test_corrupt_files_are_reported(tmp_path: Path) -> None:
    store = FilesystemManifestStore(tmp_path)
    manifest = random_image(seed=8).manifest
    await store.put_manifest("app", manifest)
    await store.set_tag("app", "v1", TagRecord(manifest.digest, OCI_MANIFEST, 1.0))
    repo = tmp_path / "repositories" / "app"
    path = repo / "_manifests" / "sha256" / manifest.digest.hex
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(DigestMismatch):
        await store.get_manifest("app", manifest.digest)
    (repo / "_tags" / "v1.json").write_text("{not json")
    with pytest.raises(StorageError):
        await store.get_tag("app", "v1")


# --- filesystem: no path outside the root ----------------------------------------------


@pytest.mark.anyio
async def test_no_input_escapes_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blobs = FilesystemBlobStore(root)
    manifests = FilesystemManifestStore(root)
    (tmp_path / "x").mkdir()
    before = snapshot(tmp_path)
    manifest = random_image(seed=9).manifest
    record = TagRecord(manifest.digest, OCI_MANIFEST, 1.0)
    for name in INVALID_NAMES:
        for call in (
            manifests.put_manifest(name, manifest),
            manifests.get_manifest(name, manifest.digest),
            manifests.delete_manifest(name, manifest.digest),
            manifests.set_tag(name, "v1", record),
            manifests.get_tag(name, "v1"),
            manifests.delete_tag(name, "v1"),
            manifests.tags(name),
        ):
            with pytest.raises(NameInvalid):
                await call
    for tag in INVALID_TAGS:
        for call in (
            manifests.set_tag("x", tag, record),
            manifests.get_tag("x", tag),
            manifests.delete_tag("x", tag),
        ):
            with pytest.raises(TagInvalid):
                await call
    bad: object
    for bad in INVALID_DIGESTS:
        for call in (
            blobs.stat(bad),  # type: ignore[arg-type]
            blobs.open(bad),  # type: ignore[arg-type]
            blobs.delete(bad),  # type: ignore[arg-type]
            manifests.get_manifest("x", bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(DigestInvalid):
                await call
        with pytest.raises(DigestInvalid):
            blobs.ingest(bad)  # type: ignore[arg-type]
    assert snapshot(tmp_path) == before


def test_paths_are_checked_against_the_root(tmp_path: Path) -> None:
    # Validation already refuses these; the path builder refuses them again.
    store = FilesystemBlobStore(tmp_path / "root")
    for parts in (("..", "x"), ("/etc",), ("a", "..", "..", "b"), (".",)):
        with pytest.raises(InvalidInput):
            store._root.join(*parts)
    assert store._root.join("blobs", "x") == str(tmp_path / "root" / "blobs" / "x")


# --- memory ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_stores_share_nothing() -> None:
    first, second = MemoryBlobStore(), MemoryBlobStore()
    digest = Digest.from_bytes(b"x")
    async with first.ingest(digest, 1) as writer:
        await writer.write(b"x")
        await writer.commit()
    assert await second.stat(digest) is None
    stream = await first.open(digest)
    assert stream is not None
    assert stream.source == "memory"
    await stream.aclose()


# --- filesystem: the referrers index ---------------------------------------------------


@pytest.mark.anyio
async def test_referrer_entry_without_its_manifest_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash (here: a full disk) between the index entry and the manifest
    # leaves an entry that does not count: nothing is listed that is not stored.
    store = FilesystemManifestStore(tmp_path)
    subject = random_image(seed=40).manifest
    sbom = random_artifact(subject, seed=41)
    writes = 0
    real_write_all = _fsroot.write_all

    def full_on_second_file(fd: int, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:
            _full_disk(fd, data)
        real_write_all(fd, data)

    monkeypatch.setattr(_fsroot, "write_all", full_on_second_file)
    with pytest.raises(StorageError):
        await store.put_manifest("app", sbom.manifest)
    monkeypatch.setattr(_fsroot, "write_all", real_write_all)
    entries = tmp_path / "repositories" / "app" / "_referrers" / "sha256" / subject.digest.hex
    assert os.listdir(entries) == [f"sha256-{sbom.manifest.digest.hex}.json"]
    assert await store.get_manifest("app", sbom.manifest.digest) is None
    assert await store.referrers("app", subject.digest) == []
    assert await store.repositories() == []
    # Putting it again completes it.
    await store.put_manifest("app", sbom.manifest)
    assert await store.referrers("app", subject.digest) == [sbom.manifest.referrer()]
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_corrupt_referrer_entry_is_a_storage_error(tmp_path: Path) -> None:
    store = FilesystemManifestStore(tmp_path)
    subject = random_image(seed=42).manifest
    sbom = random_artifact(subject, seed=43)
    await store.put_manifest("app", sbom.manifest)
    entry = (
        tmp_path
        / "repositories"
        / "app"
        / "_referrers"
        / "sha256"
        / subject.digest.hex
        / f"sha256-{sbom.manifest.digest.hex}.json"
    )
    entry.write_text('{"mediaType": "a/b", "mediaType": "c/d"}')
    with pytest.raises(StorageError, match="corrupt referrers entry"):
        await store.referrers("app", subject.digest)
    other = random_artifact(subject, seed=44).manifest.referrer()
    entry.write_text(other.to_json())
    with pytest.raises(StorageError, match="describes"):
        await store.referrers("app", subject.digest)


def test_referrers_index_is_a_capability_of_the_shipped_manifest_stores(tmp_path: Path) -> None:
    assert isinstance(MemoryManifestStore(), ReferrersIndex)
    assert isinstance(FilesystemManifestStore(tmp_path), ReferrersIndex)
    assert not isinstance(MemoryBlobStore(), ReferrersIndex)


# --- filesystem: the usage log across processes ---------------------------------------

_OTHER_PROCESS = """
import sys, anyio
from dockerconnect import Digest, FilesystemBlobStore

async def main() -> None:
    store = FilesystemBlobStore(sys.argv[1])
    data = bytes.fromhex(sys.argv[2])
    if sys.argv[3] == "commit":
        async with store.ingest(Digest.from_bytes(data), len(data)) as writer:
            await writer.write(data)
            await writer.commit()
    else:
        store.touch(Digest.from_bytes(data), float(sys.argv[4]))
        await store.flush()

anyio.run(main)
"""


def _in_another_process(root: Path, data: bytes, *args: str) -> None:
    src = Path(__file__).resolve().parent.parent / "src"
    subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(root), data.hex(), *args],
        env={**os.environ, "PYTHONPATH": str(src)},
        check=True,
        timeout=60,
    )


@pytest.mark.anyio
async def test_a_commit_in_another_process_keeps_a_cached_blob(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = b"cached long ago, committed again elsewhere"
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    await store.mark(digest, source="hub", at=1000.0)
    before = time.time() - 1
    # Another process sharing the root commits the same blob: that is a use,
    # recorded under the bucket lock, so a removal of "idle" content keeps it.
    await anyio.to_thread.run_sync(_in_another_process, tmp_path, data, "commit")
    (listed,) = await store.cached()
    assert listed.last_used >= before
    assert await store.remove_cached(digest, unused_since=before) is False
    assert await store.stat(digest) is not None
    assert await store.remove_cached(digest, unused_since=math.inf) is True
    assert filesystem_leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_flushed_uses_are_seen_by_other_processes(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = b"used in another process"
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    await store.mark(digest, source="hub", at=1000.0)
    await anyio.to_thread.run_sync(_in_another_process, tmp_path, data, "touch", "2500.0")
    assert [b.last_used for b in await store.cached()] == [2500.0]
    assert await store.remove_cached(digest, unused_since=2000.0) is False
    assert await store.remove_cached(digest, unused_since=2500.0) is True


@pytest.mark.anyio
async def test_a_touch_during_a_flush_stays_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = b"touched while its earlier use is written"
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    await store.mark(digest, source="hub", at=1.0)
    store.touch(digest, 10.0)
    writing, resume = threading.Event(), threading.Event()
    real_write_uses = _fsusage.Usage.write_uses

    def slow_write_uses(usage: _fsusage.Usage, uses: dict[Digest, float]) -> None:
        writing.set()
        resume.wait(timeout=30)
        real_write_uses(usage, uses)

    monkeypatch.setattr(_fsusage.Usage, "write_uses", slow_write_uses)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(store.flush)
        await anyio.to_thread.run_sync(writing.wait, 30)
        store.touch(digest, 20.0)  # on the event loop, while the thread writes 10.0
        resume.set()
    assert os.stat(store.blob_path(digest)).st_mtime == 10.0
    assert [b.last_used for b in await store.cached()] == [20.0]
    monkeypatch.undo()
    await store.flush()
    assert os.stat(store.blob_path(digest)).st_mtime == 20.0
