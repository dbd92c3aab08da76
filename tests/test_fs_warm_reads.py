"""Warm reads from the filesystem stores cost as few thread hops as they can,
and are never wrong for it.

- A blob of a chunk and a short tail is read in the hop that opens it, in
  chunks of at most ``CHUNK_SIZE``; its file closes once read to the end.
- ``FilesystemManifestStore.get_tagged`` reads a tag and the manifest it names
  in one hop, and a warm pull by tag through a Resolver costs that one hop;
  a tag moved on disk (by another process sharing the root) is seen at once,
  and a manifest file that does not read back is reported where it is needed
  and nowhere else.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dockerconnect import (
    CachingPolicy,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    Resolver,
)
from dockerconnect import _filesystem as filesystem
from dockerconnect._manifest import OCI_MANIFEST
from dockerconnect._protocols import TagRecord
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import DigestMismatch, StorageError
from dockerconnect.testing import CountingConnector, FakeUpstream, random_blob, random_image
from test_stores import open_files_under

pytestmark = pytest.mark.anyio

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Each thread hop the filesystem stores make, by what it was for."""
    counted: Counter[str] = Counter()
    real = filesystem.run

    async def run(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        counted[what] += 1
        return await real(what, func, *args, **kwargs)

    monkeypatch.setattr(filesystem, "run", run)
    return counted


async def _put(store: FilesystemBlobStore, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        await writer.commit()
    return digest


# -- blobs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunks", "reads"),
    [
        (CHUNK_SIZE + 548, [CHUNK_SIZE, 548], 1),  # a layer of "1 MiB" as gzip leaves it
        (CHUNK_SIZE + filesystem.TAIL, [CHUNK_SIZE, filesystem.TAIL], 1),
        (CHUNK_SIZE + filesystem.TAIL + 1, [CHUNK_SIZE, filesystem.TAIL + 1], 2),
        (3 * CHUNK_SIZE + 5, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE, 5], 3),
        (100, [100], 1),
    ],
)
async def test_a_blob_is_read_in_as_few_hops_as_its_tail_allows(
    tmp_path: Path, hops: Counter[str], size: int, chunks: list[int], reads: int
) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(size, size % 97)
    digest = await _put(store, data)
    hops.clear()
    stream = await store.open(digest)
    assert stream is not None
    got = []
    async for chunk in stream:
        got.append(chunk)
        if sum(map(len, got)) == size:
            # The last chunk is in hand: the file is closed already.
            assert open_files_under(tmp_path) == []
    assert [len(c) for c in got] == chunks
    assert b"".join(got) == data
    assert hops["open blob"] + hops["read blob"] == reads
    await stream.aclose()
    assert open_files_under(tmp_path) == []


async def test_a_range_from_an_offset_reads_its_tail_with_it(
    tmp_path: Path, hops: Counter[str]
) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(2 * CHUNK_SIZE + 10, 3)
    digest = await _put(store, data)
    hops.clear()
    stream = await store.open(digest, offset=CHUNK_SIZE - 20)
    assert stream is not None
    async with stream:
        got = [chunk async for chunk in stream]
    assert [len(c) for c in got] == [CHUNK_SIZE, 30]
    assert b"".join(got) == data[CHUNK_SIZE - 20 :]
    assert hops == {"open blob": 1}


async def test_a_file_that_shrinks_mid_stream_is_a_storage_error(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = random_blob(3 * CHUNK_SIZE, 4)
    digest = await _put(store, data)
    stream = await store.open(digest)
    assert stream is not None
    got = []
    with pytest.raises(StorageError, match="ended at byte"):
        async with stream:
            async for chunk in stream:
                if not got:
                    # Truncated under the reader (by hand: the store never does).
                    os.truncate(store.blob_path(digest), CHUNK_SIZE + 10)
                got.append(chunk)
    assert b"".join(got) == data[: CHUNK_SIZE + 10]
    assert open_files_under(tmp_path) == []


# -- manifests by tag -----------------------------------------------------------------


async def test_get_tagged_reads_the_tag_and_its_manifest_in_one_hop(
    tmp_path: Path, hops: Counter[str]
) -> None:
    store = FilesystemManifestStore(tmp_path)
    manifest = random_image(seed=61).manifest
    record = TagRecord(manifest.digest, OCI_MANIFEST, 5.0, "up")
    await store.put_manifest("app", manifest)
    await store.set_tag("app", "v1", record)
    hops.clear()
    tagged = await store.get_tagged("app", "v1")
    assert tagged is not None
    assert tagged[0] == record
    assert tagged[1] is not None and tagged[1].data == manifest.data
    assert hops == {"read tag": 1}
    assert await store.get_tagged("app", "v2") is None
    assert await store.get_tagged("other", "v1") is None


async def test_get_tagged_sees_a_tag_moved_by_another_instance_at_once(tmp_path: Path) -> None:
    ours, theirs = FilesystemManifestStore(tmp_path), FilesystemManifestStore(tmp_path)
    old, new = random_image(seed=62).manifest, random_image(seed=63).manifest
    await ours.put_manifest("app", old)
    await ours.set_tag("app", "v1", TagRecord(old.digest, OCI_MANIFEST, 5.0))
    first = await ours.get_tagged("app", "v1")
    assert first is not None and first[1] is not None and first[1].digest == old.digest
    # Another process sharing the root pushes v1 anew.
    await theirs.put_manifest("app", new)
    await theirs.set_tag("app", "v1", TagRecord(new.digest, OCI_MANIFEST, 6.0))
    moved = await ours.get_tagged("app", "v1")
    assert moved is not None and moved[0].digest == new.digest
    assert moved[1] is not None and moved[1].data == new.data
    # And deletes the manifest: the tag is left dangling, the manifest is not served.
    assert await theirs.delete_manifest("app", new.digest)
    dangling = await ours.get_tagged("app", "v1")
    assert dangling is not None and dangling[0].digest == new.digest and dangling[1] is None


async def test_get_tagged_leaves_a_bad_manifest_file_to_get_manifest(tmp_path: Path) -> None:
    store = FilesystemManifestStore(tmp_path)
    manifest = random_image(seed=64).manifest
    await store.put_manifest("app", manifest)
    await store.set_tag("app", "v1", TagRecord(manifest.digest, OCI_MANIFEST, 5.0))
    assert await store.get_manifest("app", manifest.digest) is not None  # memoised
    path = tmp_path / "repositories" / "app" / "_manifests" / "sha256" / manifest.digest.hex
    good = path.read_bytes()
    for bad in (good + b" ", b"\xff" + good, good.split(b"\n", 1)[1]):
        path.write_bytes(bad)
        tagged = await store.get_tagged("app", "v1")
        assert tagged is not None and tagged[1] is None
        with pytest.raises((DigestMismatch, StorageError)):
            await store.get_manifest("app", manifest.digest)
    path.write_bytes(good)
    tagged = await store.get_tagged("app", "v1")
    assert tagged is not None and tagged[1] is not None and tagged[1].data == manifest.data
    tag_file = tmp_path / "repositories" / "app" / "_tags" / "v1.json"
    tag_file.write_text("{not json")
    with pytest.raises(StorageError, match="corrupt tag record"):
        await store.get_tagged("app", "v1")


# -- through a Resolver -------------------------------------------------------------------


def _resolver(root: Path, upstream: CountingConnector, clock: Clock) -> Resolver:
    return Resolver(
        "local",
        manifests=FilesystemManifestStore(root),
        blobs=MemoryBlobStore(),
        connectors=[upstream],
        policy=CachingPolicy(tag_ttl=60),
        clock=clock,
    )


async def test_a_warm_pull_by_tag_is_one_hop_and_asks_no_upstream(
    tmp_path: Path, hops: Counter[str]
) -> None:
    image = random_image(seed=65)
    fake = FakeUpstream("up")
    fake.add("app", image, tag="v1")
    upstream = CountingConnector(fake)
    async with _resolver(tmp_path, upstream, Clock()) as r:
        assert (await r.get_manifest("app", "v1")).data == image.manifest.data
        await r.wait_idle()  # the cold manifest's durable commit has landed
        asked = upstream.total
        for _ in range(3):
            hops.clear()
            assert (await r.get_manifest("app", "v1")).data == image.manifest.data
            assert hops == {"read tag": 1}
        hops.clear()
        assert (await r.get_manifest("app", str(image.manifest.digest))).digest == (
            image.manifest.digest
        )
        assert hops == {"read manifest": 1}
        assert upstream.total == asked


async def test_a_stale_tag_that_moved_is_not_failed_by_its_old_corrupt_manifest(
    tmp_path: Path,
) -> None:
    old, new = random_image(seed=66), random_image(seed=67)
    fake = FakeUpstream("up")
    fake.add("app", old, tag="v1")
    fake.add("app", new)
    clock = Clock()
    async with _resolver(tmp_path, CountingConnector(fake), clock) as r:
        assert (await r.get_manifest("app", "v1")).digest == old.manifest.digest
        await r.wait_idle()  # committed: the files are there
        path = tmp_path / "repositories" / "app" / "_manifests" / "sha256"
        (path / old.manifest.digest.hex).write_bytes(b"garbage")
        fake.tag("app", "v1", new.manifest.digest)
        clock.advance(61)
        assert (await r.get_manifest("app", "v1")).data == new.manifest.data


async def test_a_fresh_tag_whose_manifest_file_is_corrupt_is_an_error_not_a_wrong_byte(
    tmp_path: Path,
) -> None:
    image = random_image(seed=68)
    fake = FakeUpstream("up")
    fake.add("app", image, tag="v1")
    async with _resolver(tmp_path, CountingConnector(fake), Clock()) as r:
        assert (await r.get_manifest("app", "v1")).data == image.manifest.data
        await r.wait_idle()  # committed: the files are there
        path = tmp_path / "repositories" / "app" / "_manifests" / "sha256"
        file = path / image.manifest.digest.hex
        file.write_bytes(file.read_bytes() + b" ")
        with pytest.raises(DigestMismatch):
            await r.get_manifest("app", "v1")
