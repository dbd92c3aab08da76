"""Conformance suites that prove a ``BlobStore`` or ``ManifestStore`` implementation.

Subclass a suite in a ``Test*`` class, override its one factory fixture, and
pytest runs every test on your backend::

    class TestMyBlobStore(BlobStoreConformance):
        @pytest.fixture
        def blob_store_factory(self, tmp_path):
            return lambda: MyBlobStore(tmp_path)

The factory is a callable taking no arguments that returns a store, or an
awaitable of one. Every call within one test must return a store over the
*same* storage: a persistent backend returns a new instance each time (the
suite uses a second call to simulate a restart when ``persistent = True``),
a volatile one may return the same instance. The fixture may be a ``yield``
fixture to clean up after the test.

After each test the suite asks :meth:`~BlobStoreConformance.blob_store_leftovers`
(or :meth:`~ManifestStoreConformance.manifest_store_leftovers`) what the
store left behind that it should not have (temporary files, open file
handles) and fails the test if anything is reported. Every async test is
marked ``anyio``: it runs on each backend the ``anyio_backend`` fixture names.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from typing import ClassVar

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, Manifest
from dockerconnect._protocols import (
    BLOB_MEDIA_TYPE,
    BlobStore,
    ManifestStore,
    TagRecord,
)
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import (
    BlobUploadInvalid,
    DigestInvalid,
    DigestMismatch,
    NameInvalid,
    RangeInvalid,
    SizeInvalid,
    TagInvalid,
    Unsupported,
)
from dockerconnect.testing._capability_conformance import (
    BlobUsageLogTests,
    ManifestUsageLogTests,
    ReferrersIndexTests,
)
from dockerconnect.testing._images import random_blob, random_image, random_index
from dockerconnect.testing._suite_support import (
    INVALID_DIGESTS,
    INVALID_NAMES,
    INVALID_TAGS,
    BlobStoreFactory,
    ManifestStoreFactory,
    make_store,
    put_blob,
    untyped,
)

__all__ = [
    "INVALID_DIGESTS",
    "INVALID_NAMES",
    "INVALID_TAGS",
    "BlobStoreConformance",
    "BlobStoreFactory",
    "ManifestStoreConformance",
    "ManifestStoreFactory",
    "make_store",
]


async def _read(stream: BlobStream) -> tuple[bytes, list[int]]:
    """Every byte of ``stream`` and the length of each chunk, closing it."""
    sizes: list[int] = []
    parts: list[bytes] = []
    async with stream:
        async for chunk in stream:
            sizes.append(len(chunk))
            parts.append(chunk)
    return b"".join(parts), sizes


async def _commit(store: BlobStore, digest: Digest, data: bytes, size: int | None) -> None:
    """Ingest ``data`` under ``digest`` in one write and commit."""
    async with store.ingest(digest, size) as writer:
        await writer.write(data)
        await writer.commit()


async def _raise_inside(
    store: BlobStore, digest: Digest, data: bytes, error: BaseException
) -> None:
    async with store.ingest(digest, len(data)) as writer:
        await writer.write(data)
        raise error


class _Boom(Exception):
    """An error raised inside an ``ingest`` block by the test itself."""


class BlobStoreConformance(BlobUsageLogTests):
    """The contract of :class:`~dockerconnect.BlobStore`, as tests.

    Override the ``blob_store_factory`` fixture (see the module docs); set
    ``persistent = True`` if a new instance over the same storage must see
    what an earlier one wrote; override :meth:`blob_store_leftovers` to report
    what a store must not leave behind.
    """

    #: Whether a second factory call is a restart that must see the same data.
    persistent: ClassVar[bool] = False

    @pytest.fixture
    def blob_store_factory(self) -> BlobStoreFactory:
        """Override: return a callable that makes (or reopens) the store under test."""
        pytest.fail(f"{type(self).__name__} must override the blob_store_factory fixture")

    def blob_store_leftovers(self, store: BlobStore) -> Iterable[object]:
        """Override: whatever ``store`` left behind after a test (temporary
        files, open handles); anything returned fails the test."""
        return ()

    @pytest.fixture
    async def blob_store(self, blob_store_factory: BlobStoreFactory) -> AsyncIterator[BlobStore]:
        """A store from the factory; checks for leftovers after the test."""
        store = await make_store(blob_store_factory)
        yield store
        leftovers = list(self.blob_store_leftovers(store))
        assert not leftovers, f"the store left behind: {leftovers!r}"

    @staticmethod
    async def _put(store: BlobStore, data: bytes, *, piece: int = CHUNK_SIZE) -> Descriptor:
        return await put_blob(store, data, piece=piece)

    # --- absent ---------------------------------------------------------------

    @pytest.mark.anyio
    async def test_is_a_blob_store(self, blob_store: BlobStore) -> None:
        assert isinstance(blob_store, BlobStore)

    @pytest.mark.anyio
    async def test_absent_blob(self, blob_store: BlobStore) -> None:
        digest = Digest.from_bytes(b"never written")
        assert await blob_store.stat(digest) is None
        assert await blob_store.open(digest) is None
        assert await blob_store.open(digest, offset=5) is None
        assert await blob_store.delete(digest) is False

    # --- ingest ---------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "size",
        [0, 1, 1000, CHUNK_SIZE, 2 * CHUNK_SIZE + 123],
        ids=["empty", "one-byte", "small", "one-chunk", "several-chunks"],
    )
    async def test_ingest_and_read_back(self, blob_store: BlobStore, size: int) -> None:
        data = random_blob(size, size)
        descriptor = await self._put(blob_store, data)
        expected = Descriptor(BLOB_MEDIA_TYPE, Digest.from_bytes(data), size)
        assert descriptor == expected
        assert await blob_store.stat(expected.digest) == expected
        stream = await blob_store.open(expected.digest)
        assert stream is not None
        assert (stream.digest, stream.size, stream.offset) == (expected.digest, size, 0)
        got, _ = await _read(stream)
        assert got == data

    @pytest.mark.anyio
    async def test_ingest_without_declared_size(self, blob_store: BlobStore) -> None:
        data = random_blob(3000, 1)
        digest = Digest.from_bytes(data)
        async with blob_store.ingest(digest) as writer:
            await writer.write(data[:1000])
            await writer.write(data[1000:])
            assert writer.written == len(data)
            descriptor = await writer.commit()
        assert descriptor.size == len(data)
        assert await blob_store.stat(digest) == descriptor

    @pytest.mark.anyio
    async def test_many_small_writes(self, blob_store: BlobStore) -> None:
        data = random_blob(CHUNK_SIZE + 4096 * 3 + 17, 2)
        descriptor = await self._put(blob_store, data, piece=4096)
        stream = await blob_store.open(descriptor.digest)
        assert stream is not None
        got, _ = await _read(stream)
        assert got == data

    @pytest.mark.anyio
    async def test_sha512(self, blob_store: BlobStore) -> None:
        data = random_blob(5000, 3)
        digest = Digest.from_bytes(data, "sha512")
        async with blob_store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        assert await blob_store.stat(digest) == Descriptor(BLOB_MEDIA_TYPE, digest, len(data))
        assert await blob_store.stat(Digest.from_bytes(data)) is None

    @pytest.mark.anyio
    async def test_commit_existing_digest(self, blob_store: BlobStore) -> None:
        data = random_blob(2048, 4)
        first = await self._put(blob_store, data)
        second = await self._put(blob_store, data)
        assert first == second
        assert await blob_store.stat(first.digest) == first
        assert await blob_store.delete(first.digest) is True
        assert await blob_store.stat(first.digest) is None

    @pytest.mark.anyio
    async def test_concurrent_ingest_of_one_digest(self, blob_store: BlobStore) -> None:
        data = random_blob(2 * CHUNK_SIZE + 5, 5)
        digest = Digest.from_bytes(data)
        half = len(data) // 2
        both_written = anyio.Event()
        results: list[Descriptor] = []
        waiting = 2

        async def ingest() -> None:
            nonlocal waiting
            async with blob_store.ingest(digest, len(data)) as writer:
                await writer.write(data[:half])
                await anyio.lowlevel.checkpoint()
                await writer.write(data[half:])
                # Both writers hold complete, uncommitted copies before either commits.
                waiting -= 1
                if waiting == 0:
                    both_written.set()
                await both_written.wait()
                results.append(await writer.commit())

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ingest)
                tg.start_soon(ingest)
        expected = Descriptor(BLOB_MEDIA_TYPE, digest, len(data))
        assert results == [expected, expected]
        assert await blob_store.stat(digest) == expected
        stream = await blob_store.open(digest)
        assert stream is not None
        assert (await _read(stream))[0] == data

    # --- failures publish nothing ----------------------------------------------

    @pytest.mark.anyio
    async def test_wrong_bytes(self, blob_store: BlobStore) -> None:
        data = random_blob(4000, 6)
        digest = Digest.from_bytes(data)
        wrong = bytes([data[0] ^ 1]) + data[1:]
        with pytest.raises(DigestMismatch) as info:
            await _commit(blob_store, digest, wrong, len(wrong))
        assert not isinstance(info.value, SizeInvalid)
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_wrong_bytes_without_declared_size(self, blob_store: BlobStore) -> None:
        digest = Digest.from_bytes(b"right")
        with pytest.raises(DigestMismatch):
            await _commit(blob_store, digest, b"wrong", None)
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_too_many_bytes_fail_on_write(self, blob_store: BlobStore) -> None:
        data = random_blob(3000, 7)
        digest = Digest.from_bytes(data)
        async with blob_store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            with pytest.raises(SizeInvalid):
                await writer.write(b"x")
            with pytest.raises(BlobUploadInvalid):
                await writer.write(b"")
            with pytest.raises(BlobUploadInvalid):
                await writer.commit()
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_too_many_bytes_in_one_write(self, blob_store: BlobStore) -> None:
        data = random_blob(3000, 8)
        digest = Digest.from_bytes(data)
        with pytest.raises(SizeInvalid):
            async with blob_store.ingest(digest, len(data) - 1) as writer:
                await writer.write(data)
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_too_few_bytes(self, blob_store: BlobStore) -> None:
        data = random_blob(3000, 9)
        digest = Digest.from_bytes(data)
        with pytest.raises(SizeInvalid):
            await _commit(blob_store, digest, data, len(data) + 1)
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_leaving_without_commit(self, blob_store: BlobStore) -> None:
        data = random_blob(CHUNK_SIZE + 1, 10)
        digest = Digest.from_bytes(data)
        async with blob_store.ingest(digest, len(data)) as writer:
            await writer.write(data)
        assert await blob_store.stat(digest) is None
        with pytest.raises(BlobUploadInvalid):
            await writer.commit()
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_exception_inside_ingest(self, blob_store: BlobStore) -> None:
        data = random_blob(CHUNK_SIZE + 1, 11)
        digest = Digest.from_bytes(data)
        boom = _Boom("raised by the test")
        with pytest.raises(_Boom) as info:
            await _raise_inside(blob_store, digest, data, boom)
        assert info.value is boom
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_cancelled_ingest(self, blob_store: BlobStore) -> None:
        data = random_blob(CHUNK_SIZE // 2, 12)
        digest = Digest.from_bytes(data * 1000)
        progressed = anyio.Event()

        async def ingest(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with blob_store.ingest(digest) as writer:
                task_status.started()
                while True:
                    await writer.write(data)
                    if writer.written >= 3 * len(data):
                        progressed.set()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(ingest)
                await progressed.wait()
                tg.cancel_scope.cancel()
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_writer_after_commit(self, blob_store: BlobStore) -> None:
        data = b"committed once"
        async with blob_store.ingest(Digest.from_bytes(data), len(data)) as writer:
            await writer.write(data)
            await writer.commit()
            with pytest.raises(BlobUploadInvalid):
                await writer.write(b"more")
            with pytest.raises(BlobUploadInvalid):
                await writer.commit()
        assert await blob_store.stat(Digest.from_bytes(data)) is not None

    @pytest.mark.anyio
    async def test_writer_after_failed_commit(self, blob_store: BlobStore) -> None:
        digest = Digest.from_bytes(b"right")
        async with blob_store.ingest(digest) as writer:
            await writer.write(b"wrong")
            with pytest.raises(DigestMismatch):
                await writer.commit()
            with pytest.raises(BlobUploadInvalid):
                await writer.write(b"right")
            with pytest.raises(BlobUploadInvalid):
                await writer.commit()
        assert await blob_store.stat(digest) is None

    # --- reading from offsets ---------------------------------------------------

    @pytest.mark.anyio
    async def test_open_from_offsets(self, blob_store: BlobStore) -> None:
        data = random_blob(2 * CHUNK_SIZE + 77, 13)
        descriptor = await self._put(blob_store, data)
        for offset in (0, 1, CHUNK_SIZE, len(data) // 2, len(data) - 1, len(data)):
            stream = await blob_store.open(descriptor.digest, offset=offset)
            assert stream is not None
            assert (stream.size, stream.offset) == (len(data), offset)
            got, sizes = await _read(stream)
            assert got == data[offset:], offset
            assert all(0 < n <= CHUNK_SIZE for n in sizes), sizes

    @pytest.mark.anyio
    async def test_bounded_chunks(self, blob_store: BlobStore) -> None:
        data = random_blob(3 * CHUNK_SIZE + 1, 14)
        descriptor = await self._put(blob_store, data, piece=len(data))
        stream = await blob_store.open(descriptor.digest)
        assert stream is not None
        got, sizes = await _read(stream)
        assert got == data
        assert max(sizes) <= CHUNK_SIZE
        assert len(sizes) >= math.ceil(len(data) / CHUNK_SIZE)

    @pytest.mark.anyio
    @pytest.mark.parametrize("past", [1, 1000])
    async def test_open_past_the_end(self, blob_store: BlobStore, past: int) -> None:
        descriptor = await self._put(blob_store, b"0123456789")
        with pytest.raises(RangeInvalid):
            await blob_store.open(descriptor.digest, offset=10 + past)

    @pytest.mark.anyio
    async def test_open_negative_offset(self, blob_store: BlobStore) -> None:
        descriptor = await self._put(blob_store, b"0123456789")
        with pytest.raises(RangeInvalid):
            await blob_store.open(descriptor.digest, offset=-1)

    @pytest.mark.anyio
    async def test_stream_closed_early(self, blob_store: BlobStore) -> None:
        data = random_blob(3 * CHUNK_SIZE, 15)
        descriptor = await self._put(blob_store, data)
        stream = await blob_store.open(descriptor.digest)
        assert stream is not None
        async with stream:
            async for chunk in stream:
                assert chunk == data[: len(chunk)]
                break
        unread = await blob_store.open(descriptor.digest, offset=7)
        assert unread is not None
        async with unread:
            pass

    # --- delete -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_delete(self, blob_store: BlobStore) -> None:
        keep = await self._put(blob_store, b"keep me")
        gone = await self._put(blob_store, b"delete me")
        assert await blob_store.delete(gone.digest) is True
        assert await blob_store.stat(gone.digest) is None
        assert await blob_store.open(gone.digest) is None
        assert await blob_store.delete(gone.digest) is False
        assert await blob_store.stat(keep.digest) == keep
        again = await self._put(blob_store, b"delete me")
        assert await blob_store.stat(gone.digest) == again

    # --- invalid input --------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_DIGESTS)
    async def test_invalid_digest(self, blob_store: BlobStore, bad: str) -> None:
        with pytest.raises(DigestInvalid):
            await blob_store.stat(untyped(bad))
        with pytest.raises(DigestInvalid):
            await blob_store.open(untyped(bad))
        with pytest.raises(DigestInvalid):
            await blob_store.delete(untyped(bad))
        with pytest.raises(DigestInvalid):
            await _commit(blob_store, untyped(bad), b"x", None)

    @pytest.mark.anyio
    async def test_unverifiable_algorithm(self, blob_store: BlobStore) -> None:
        digest = Digest.parse("md5:" + "0" * 32)
        with pytest.raises(Unsupported):
            await _commit(blob_store, digest, b"x", None)
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_invalid_size(self, blob_store: BlobStore) -> None:
        with pytest.raises(ValueError):
            await _commit(blob_store, Digest.from_bytes(b""), b"", -1)

    # --- persistence ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_restart(
        self, blob_store: BlobStore, blob_store_factory: BlobStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        data = random_blob(CHUNK_SIZE + 3, 16)
        descriptor = await self._put(blob_store, data)
        doomed = await self._put(blob_store, b"deleted after the restart")
        reopened = await make_store(blob_store_factory)
        assert reopened is not blob_store
        assert await reopened.stat(descriptor.digest) == descriptor
        stream = await reopened.open(descriptor.digest, offset=100)
        assert stream is not None
        assert (await _read(stream))[0] == data[100:]
        assert await reopened.delete(doomed.digest) is True
        assert await blob_store.stat(doomed.digest) is None
        assert list(self.blob_store_leftovers(reopened)) == []


def _record(
    digest: Digest, *, at: float = 1_700_000_000.125, source: str | None = None
) -> TagRecord:
    return TagRecord(digest, OCI_MANIFEST, at, source)


def _odd_manifest() -> Manifest:
    # Unusual spacing and key order: a store that re-serialises changes the digest.
    image = random_image(seed=99)
    config = image.manifest.config
    assert config is not None
    data = (
        b'{"layers":[],  "config" : {"size": %d, "digest": "%s",\n'
        b'"mediaType":"application/vnd.oci.image.config.v1+json"},'
        b'\t"schemaVersion":2 , "mediaType": "%s"}  \n'
        % (config.size, str(config.digest).encode(), OCI_MANIFEST.encode())
    )
    return Manifest.parse(data, OCI_MANIFEST)


class ManifestStoreConformance(ReferrersIndexTests, ManifestUsageLogTests):
    """The contract of :class:`~dockerconnect.ManifestStore`, as tests.

    Override the ``manifest_store_factory`` fixture (see the module docs);
    set ``persistent = True`` if a new instance over the same storage must
    see what an earlier one wrote; override :meth:`manifest_store_leftovers`
    to report what a store must not leave behind.
    """

    #: Whether a second factory call is a restart that must see the same data.
    persistent: ClassVar[bool] = False

    @pytest.fixture
    def manifest_store_factory(self) -> ManifestStoreFactory:
        """Override: return a callable that makes (or reopens) the store under test."""
        pytest.fail(f"{type(self).__name__} must override the manifest_store_factory fixture")

    def manifest_store_leftovers(self, store: ManifestStore) -> Iterable[object]:
        """Override: whatever ``store`` left behind after a test; anything
        returned fails the test."""
        return ()

    @pytest.fixture
    async def manifest_store(
        self, manifest_store_factory: ManifestStoreFactory
    ) -> AsyncIterator[ManifestStore]:
        """A store from the factory; checks for leftovers after the test."""
        store = await make_store(manifest_store_factory)
        yield store
        leftovers = list(self.manifest_store_leftovers(store))
        assert not leftovers, f"the store left behind: {leftovers!r}"

    # --- absent -----------------------------------------------------------------

    @pytest.mark.anyio
    async def test_is_a_manifest_store(self, manifest_store: ManifestStore) -> None:
        assert isinstance(manifest_store, ManifestStore)

    @pytest.mark.anyio
    async def test_absent(self, manifest_store: ManifestStore) -> None:
        digest = Digest.from_bytes(b"{}")
        assert await manifest_store.get_manifest("a/b", digest) is None
        assert await manifest_store.delete_manifest("a/b", digest) is False
        assert await manifest_store.get_tag("a/b", "latest") is None
        assert await manifest_store.delete_tag("a/b", "latest") is False
        assert await manifest_store.tags("a/b") is None
        assert await manifest_store.repositories() == []

    # --- manifests ----------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("kind", ["oci", "docker", "oci-index", "docker-list", "odd-spacing"])
    async def test_manifest_round_trip(self, manifest_store: ManifestStore, kind: str) -> None:
        manifest = {
            "oci": lambda: random_image(seed=1).manifest,
            "docker": lambda: random_image(seed=2, media_type=DOCKER_MANIFEST).manifest,
            "oci-index": lambda: random_index(seed=3).manifest,
            "docker-list": lambda: random_index(seed=4, media_type=DOCKER_MANIFEST_LIST).manifest,
            "odd-spacing": _odd_manifest,
        }[kind]()
        await manifest_store.put_manifest("library/app", manifest)
        got = await manifest_store.get_manifest("library/app", manifest.digest)
        assert got is not None
        assert got.data == manifest.data
        assert got.media_type == manifest.media_type
        assert got.digest == manifest.digest == Digest.from_bytes(got.data)

    @pytest.mark.anyio
    async def test_manifests_are_per_repository(self, manifest_store: ManifestStore) -> None:
        manifest = random_image(seed=5).manifest
        await manifest_store.put_manifest("a", manifest)
        assert await manifest_store.get_manifest("b", manifest.digest) is None
        assert await manifest_store.get_manifest("a/b", manifest.digest) is None
        assert await manifest_store.delete_manifest("b", manifest.digest) is False
        assert await manifest_store.get_manifest("a", manifest.digest) == manifest

    @pytest.mark.anyio
    async def test_put_manifest_twice(self, manifest_store: ManifestStore) -> None:
        manifest = random_image(seed=6).manifest
        await manifest_store.put_manifest("app", manifest)
        await manifest_store.put_manifest("app", manifest)
        assert await manifest_store.get_manifest("app", manifest.digest) == manifest
        assert await manifest_store.delete_manifest("app", manifest.digest) is True
        assert await manifest_store.get_manifest("app", manifest.digest) is None
        assert await manifest_store.delete_manifest("app", manifest.digest) is False

    # --- tags -----------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_tag_set_get_overwrite_delete(self, manifest_store: ManifestStore) -> None:
        first = random_image(seed=7).manifest.digest
        second = Digest.from_bytes(b"second", "sha512")
        local = _record(first)
        cached = TagRecord(second, DOCKER_MANIFEST, 1_700_000_123.000_001, "docker-hub")
        await manifest_store.set_tag("app", "v1", local)
        assert await manifest_store.get_tag("app", "v1") == local
        await manifest_store.set_tag("app", "v1", cached)
        got = await manifest_store.get_tag("app", "v1")
        assert got == cached
        assert got is not None
        assert got.confirmed_at == 1_700_000_123.000_001
        assert await manifest_store.tags("app") == ["v1"]
        assert await manifest_store.get_tag("other", "v1") is None
        assert await manifest_store.delete_tag("app", "v1") is True
        assert await manifest_store.get_tag("app", "v1") is None
        assert await manifest_store.delete_tag("app", "v1") is False

    @pytest.mark.anyio
    async def test_tags_in_lexical_order(self, manifest_store: ManifestStore) -> None:
        digest = Digest.from_bytes(b"m")
        names = ["b9", "b10", "B", "a", "_z", "A-1", "a.b", "a_b", "a-b", "0", "x" * 128]
        for name in names:
            await manifest_store.set_tag("app", name, _record(digest))
        assert await manifest_store.tags("app") == sorted(names)

    @pytest.mark.anyio
    async def test_tags_none_only_when_nothing_is_held(self, manifest_store: ManifestStore) -> None:
        manifest = random_image(seed=8).manifest
        assert await manifest_store.tags("app") is None
        await manifest_store.put_manifest("app", manifest)
        assert await manifest_store.tags("app") == []
        await manifest_store.set_tag("app", "t", _record(manifest.digest))
        assert await manifest_store.tags("app") == ["t"]
        await manifest_store.delete_tag("app", "t")
        assert await manifest_store.tags("app") == []
        await manifest_store.delete_manifest("app", manifest.digest)
        assert await manifest_store.tags("app") is None
        assert await manifest_store.repositories() == []
        # A tag alone (its manifest not stored here) is something held.
        await manifest_store.set_tag("app", "t", _record(manifest.digest))
        assert await manifest_store.tags("app") == ["t"]
        assert await manifest_store.repositories() == ["app"]

    @pytest.mark.anyio
    async def test_nested_repositories_are_independent(self, manifest_store: ManifestStore) -> None:
        digest = Digest.from_bytes(b"m")
        await manifest_store.set_tag("x/y", "inner", _record(digest))
        assert await manifest_store.tags("x") is None
        assert await manifest_store.repositories() == ["x/y"]
        await manifest_store.set_tag("x", "outer", _record(digest))
        assert await manifest_store.tags("x") == ["outer"]
        assert await manifest_store.tags("x/y") == ["inner"]
        assert await manifest_store.repositories() == ["x", "x/y"]

    # --- repositories -------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_repositories_in_lexical_order(self, manifest_store: ManifestStore) -> None:
        manifest = random_image(seed=9).manifest
        with_manifest = ["b", "a/b/c", "z0", "a-b"]
        with_tag = ["a", "a/b", "a.b", "library/nginx", "a__b"]
        for name in with_manifest:
            await manifest_store.put_manifest(name, manifest)
        for name in with_tag:
            await manifest_store.set_tag(name, "latest", _record(manifest.digest))
        assert await manifest_store.repositories() == sorted(with_manifest + with_tag)
        await manifest_store.delete_manifest("b", manifest.digest)
        await manifest_store.delete_tag("a/b", "latest")
        expected = sorted(set(with_manifest + with_tag) - {"b", "a/b"})
        assert await manifest_store.repositories() == expected

    # --- invalid input ---------------------------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_NAMES)
    async def test_invalid_repository(self, manifest_store: ManifestStore, bad: str) -> None:
        manifest = random_image(seed=10).manifest
        record = _record(manifest.digest)
        with pytest.raises(NameInvalid):
            await manifest_store.put_manifest(bad, manifest)
        with pytest.raises(NameInvalid):
            await manifest_store.get_manifest(bad, manifest.digest)
        with pytest.raises(NameInvalid):
            await manifest_store.delete_manifest(bad, manifest.digest)
        with pytest.raises(NameInvalid):
            await manifest_store.set_tag(bad, "latest", record)
        with pytest.raises(NameInvalid):
            await manifest_store.get_tag(bad, "latest")
        with pytest.raises(NameInvalid):
            await manifest_store.delete_tag(bad, "latest")
        with pytest.raises(NameInvalid):
            await manifest_store.tags(bad)
        assert await manifest_store.repositories() == []

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_TAGS)
    async def test_invalid_tag(self, manifest_store: ManifestStore, bad: str) -> None:
        record = _record(Digest.from_bytes(b"m"))
        with pytest.raises(TagInvalid):
            await manifest_store.set_tag("app", bad, record)
        with pytest.raises(TagInvalid):
            await manifest_store.get_tag("app", bad)
        with pytest.raises(TagInvalid):
            await manifest_store.delete_tag("app", bad)
        assert await manifest_store.tags("app") is None
        assert await manifest_store.repositories() == []

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_DIGESTS)
    async def test_invalid_digest(self, manifest_store: ManifestStore, bad: str) -> None:
        with pytest.raises(DigestInvalid):
            await manifest_store.get_manifest("app", untyped(bad))
        with pytest.raises(DigestInvalid):
            await manifest_store.delete_manifest("app", untyped(bad))
        assert await manifest_store.repositories() == []

    # --- persistence -------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_restart(
        self, manifest_store: ManifestStore, manifest_store_factory: ManifestStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        image = random_image(seed=11)
        index = random_index(seed=12)
        record = _record(image.manifest.digest, source="upstream")
        await manifest_store.put_manifest("a/b", image.manifest)
        await manifest_store.put_manifest("c", index.manifest)
        await manifest_store.set_tag("a/b", "v1", record)
        reopened = await make_store(manifest_store_factory)
        assert reopened is not manifest_store
        assert await reopened.get_manifest("a/b", image.manifest.digest) == image.manifest
        assert await reopened.get_manifest("c", index.manifest.digest) == index.manifest
        assert await reopened.get_tag("a/b", "v1") == record
        assert await reopened.tags("a/b") == ["v1"]
        assert await reopened.tags("c") == []
        assert await reopened.repositories() == ["a/b", "c"]
        assert await reopened.delete_tag("a/b", "v1") is True
        assert await manifest_store.get_tag("a/b", "v1") is None
        assert list(self.manifest_store_leftovers(reopened)) == []
