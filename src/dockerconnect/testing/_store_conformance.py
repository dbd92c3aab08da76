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

import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ClassVar, TypeVar

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
    CachedBlob,
    CachedManifest,
    ManifestStore,
    ManifestUsageLog,
    ReferrersIndex,
    TagRecord,
    UsageLog,
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
from dockerconnect.testing._images import (
    random_artifact,
    random_blob,
    random_image,
    random_index,
)

__all__ = [
    "BlobStoreConformance",
    "BlobStoreFactory",
    "ManifestStoreConformance",
    "ManifestStoreFactory",
]

S = TypeVar("S")

#: What a ``blob_store_factory`` fixture returns.
BlobStoreFactory = Callable[[], BlobStore | Awaitable[BlobStore]]
#: What a ``manifest_store_factory`` fixture returns.
ManifestStoreFactory = Callable[[], ManifestStore | Awaitable[ManifestStore]]

#: Digests that break the OCI grammar, including path traversal attempts.
INVALID_DIGESTS = (
    "",
    "sha256",
    "sha256:",
    ":" + "0" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "A" * 64,
    "SHA256:" + "0" * 64,
    "sha256:../../../etc/passwd",
    "sha256:abc/def",
    "../" + "0" * 64,
    "/etc/passwd",
    "sha256:" + "0" * 64 + "\n",
)
#: Repository names that break the distribution-spec grammar or try to escape.
INVALID_NAMES = (
    "",
    ".",
    "..",
    "../x",
    "a/../../b",
    "a/./b",
    "/abs",
    "a//b",
    "a/",
    "Upper",
    "a b",
    "a\x00b",
    "a\\b",
    "_manifests",
    "a/_tags",
    "x" * 256,
)
#: Tags that break ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`` or try to escape.
INVALID_TAGS = ("", ".", "..", "../x", "a/b", "/abs", "-x", ".x", "a b", "a:b", "a\\b", "x" * 129)


async def make_store(factory: Callable[[], S | Awaitable[S]]) -> S:
    """Call a store factory, awaiting its result when it is awaitable."""
    made = factory()
    if inspect.isawaitable(made):
        return await made
    return made


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


def _bad(value: object) -> Any:
    # The suite passes invalid values where the protocol wants a Digest: a
    # store must refuse them rather than trust its caller's type checker.
    return value


class BlobStoreConformance:
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
        digest = Digest.from_bytes(data)
        async with store.ingest(digest, len(data)) as writer:
            for start in range(0, len(data), piece):
                await writer.write(data[start : start + piece])
            return await writer.commit()

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
            await blob_store.stat(_bad(bad))
        with pytest.raises(DigestInvalid):
            await blob_store.open(_bad(bad))
        with pytest.raises(DigestInvalid):
            await blob_store.delete(_bad(bad))
        with pytest.raises(DigestInvalid):
            await _commit(blob_store, _bad(bad), b"x", None)

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

    # --- usage and origin (optional: UsageLog) -------------------------------------------

    @staticmethod
    def _usage_log(store: BlobStore) -> UsageLog:
        if not isinstance(store, UsageLog):
            pytest.skip("the store has no usage log (UsageLog)")
        return store

    @pytest.mark.anyio
    async def test_cached_blobs_are_listed_with_size_source_and_times(
        self, blob_store: BlobStore
    ) -> None:
        log = self._usage_log(blob_store)
        assert await log.cached() == []
        small, large = b"cached small", random_blob(CHUNK_SIZE + 5, 40)
        for data, at in ((small, 1000.0), (large, 1001.5)):
            descriptor = await self._put(blob_store, data)
            await log.mark(descriptor.digest, source="hub", at=at)
        assert await log.cached() == [
            CachedBlob(Digest.from_bytes(small), len(small), "hub", 1000.0, 1000.0),
            CachedBlob(Digest.from_bytes(large), len(large), "hub", 1001.5, 1001.5),
        ]
        # Marking again keeps the first origin and time.
        await log.mark(Digest.from_bytes(small), source="other", at=1005.0)
        assert (await log.cached())[0].source == "hub"

    @pytest.mark.anyio
    async def test_pushed_and_unmarked_blobs_are_never_removed(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        pushed, cached_then_pushed, unmarked = b"pushed", b"cached, then pushed", b"no mark"
        # Pushed content is marked before its ingest; the mark is sticky.
        await log.mark(Digest.from_bytes(pushed), source=None, at=10.0)
        await self._put(blob_store, pushed)
        await log.mark(Digest.from_bytes(pushed), source="hub", at=11.0)
        await self._put(blob_store, cached_then_pushed)
        await log.mark(Digest.from_bytes(cached_then_pushed), source="hub", at=10.0)
        await log.mark(Digest.from_bytes(cached_then_pushed), source=None, at=12.0)
        await self._put(blob_store, unmarked)
        assert await log.cached() == []
        for data in (pushed, cached_then_pushed, unmarked):
            digest = Digest.from_bytes(data)
            assert await log.remove_cached(digest, unused_since=math.inf) is False
            assert await blob_store.stat(digest) is not None

    @pytest.mark.anyio
    async def test_touch_orders_by_last_use_and_never_goes_back(
        self, blob_store: BlobStore
    ) -> None:
        log = self._usage_log(blob_store)
        first, second = b"first cached", b"second cached"
        for data in (first, second):
            await self._put(blob_store, data)
            await log.mark(Digest.from_bytes(data), source="hub", at=100.0)
        log.touch(Digest.from_bytes(first), 150.0)
        log.touch(Digest.from_bytes(first), 120.0)  # older: ignored
        listed = await log.cached()
        assert [(b.digest, b.last_used) for b in listed] == [
            (Digest.from_bytes(second), 100.0),
            (Digest.from_bytes(first), 150.0),
        ]
        await log.flush()
        assert await log.cached() == listed
        await log.flush()  # nothing pending: a no-op
        assert await log.cached() == listed

    @pytest.mark.anyio
    async def test_remove_cached_only_when_unused_since(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = b"cached and idle"
        digest = (await self._put(blob_store, data)).digest
        await log.mark(digest, source="hub", at=100.0)
        log.touch(digest, 200.0)
        assert await log.remove_cached(digest, unused_since=199.0) is False
        await log.flush()
        assert await log.remove_cached(digest, unused_since=199.0) is False
        assert await blob_store.stat(digest) is not None
        assert await log.remove_cached(digest, unused_since=200.0) is True
        assert await blob_store.stat(digest) is None
        assert await blob_store.open(digest) is None
        assert await log.cached() == []
        assert await log.remove_cached(digest, unused_since=math.inf) is False
        # Cached again later, it starts afresh.
        await self._put(blob_store, data)
        await log.mark(digest, source="mirror", at=300.0)
        assert await log.cached() == [CachedBlob(digest, len(data), "mirror", 300.0, 300.0)]

    @pytest.mark.anyio
    async def test_remove_cached_refuses_during_an_ingest(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = random_blob(2 * CHUNK_SIZE, 41)
        digest = (await self._put(blob_store, data)).digest
        await log.mark(digest, source="hub", at=1.0)
        async with blob_store.ingest(digest, len(data)) as writer:
            await writer.write(data[:CHUNK_SIZE])
            assert await log.remove_cached(digest, unused_since=math.inf) is False
            await writer.write(data[CHUNK_SIZE:])
            await writer.commit()
        assert await blob_store.stat(digest) is not None
        assert await log.remove_cached(digest, unused_since=math.inf) is True

    @pytest.mark.anyio
    async def test_open_stream_reads_a_removed_blob_to_its_end(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = random_blob(3 * CHUNK_SIZE + 11, 42)
        digest = (await self._put(blob_store, data)).digest
        await log.mark(digest, source="hub", at=1.0)
        stream = await blob_store.open(digest)
        assert stream is not None
        async with stream:
            iterator = aiter(stream)
            first = await anext(iterator)
            assert await log.remove_cached(digest, unused_since=math.inf) is True
            rest = [chunk async for chunk in iterator]
        assert first + b"".join(rest) == data
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_delete_forgets_the_mark(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        digest = (await self._put(blob_store, b"deleted outright")).digest
        await log.mark(digest, source="hub", at=1.0)
        assert await blob_store.delete(digest) is True
        assert await log.cached() == []
        await self._put(blob_store, b"deleted outright")
        assert await log.cached() == []  # held again, but not known as a cache

    @pytest.mark.anyio
    async def test_usage_log_refuses_bad_input(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        digest = Digest.from_bytes(b"x")
        for bad in INVALID_DIGESTS[:4]:
            with pytest.raises(DigestInvalid):
                await log.mark(_bad(bad), source="hub", at=1.0)
            with pytest.raises(DigestInvalid):
                log.touch(_bad(bad), 1.0)
            with pytest.raises(DigestInvalid):
                await log.remove_cached(_bad(bad), unused_since=1.0)
        for at in (math.nan, math.inf, "1", None):
            with pytest.raises(ValueError):
                await log.mark(digest, source="hub", at=_bad(at))
            with pytest.raises(ValueError):
                log.touch(digest, _bad(at))
        with pytest.raises(ValueError):
            await log.mark(digest, source="", at=1.0)
        assert await log.cached() == []

    # --- persistence ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_usage_survives_a_restart(
        self, blob_store: BlobStore, blob_store_factory: BlobStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        log = self._usage_log(blob_store)
        cached, pushed = b"cached before the restart", b"pushed before the restart"
        await log.mark(Digest.from_bytes(pushed), source=None, at=5.0)
        await self._put(blob_store, pushed)
        await self._put(blob_store, cached)
        await log.mark(Digest.from_bytes(cached), source="hub", at=5.0)
        log.touch(Digest.from_bytes(cached), 9.0)
        await log.flush()
        reopened = self._usage_log(await make_store(blob_store_factory))
        assert await reopened.cached() == [
            CachedBlob(Digest.from_bytes(cached), len(cached), "hub", 5.0, 9.0)
        ]
        assert await reopened.remove_cached(Digest.from_bytes(pushed), unused_since=99.0) is False
        assert await reopened.remove_cached(Digest.from_bytes(cached), unused_since=99.0) is True
        assert await blob_store.stat(Digest.from_bytes(cached)) is None

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


class ManifestStoreConformance:
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
            await manifest_store.get_manifest("app", _bad(bad))
        with pytest.raises(DigestInvalid):
            await manifest_store.delete_manifest("app", _bad(bad))
        assert await manifest_store.repositories() == []

    # --- referrers (optional: ReferrersIndex) ------------------------------------------------

    @staticmethod
    def _referrers_index(store: ManifestStore) -> ReferrersIndex:
        if not isinstance(store, ReferrersIndex):
            pytest.skip("the store has no referrers index (ReferrersIndex)")
        return store

    @pytest.mark.anyio
    async def test_referrer_listed_at_once_without_its_subject(
        self, manifest_store: ManifestStore
    ) -> None:
        index = self._referrers_index(manifest_store)
        subject = random_image(seed=20).manifest
        sbom = random_artifact(subject, seed=21, annotations={"org.example.kind": "sbom"})
        assert await index.referrers("app", subject.digest) == []
        await manifest_store.put_manifest("app", sbom.manifest)
        found = await index.referrers("app", subject.digest)
        assert found == [sbom.manifest.referrer()]
        (entry,) = found
        assert (entry.media_type, entry.digest, entry.size) == (
            sbom.manifest.media_type,
            sbom.manifest.digest,
            len(sbom.manifest.data),
        )
        assert entry.artifact_type == "application/vnd.example.sbom+json"
        assert entry.annotations == {"org.example.kind": "sbom"}
        # The subject was never stored: the referrer is still a manifest here.
        assert await manifest_store.get_manifest("app", subject.digest) is None
        assert await manifest_store.get_manifest("app", sbom.manifest.digest) == sbom.manifest

    @pytest.mark.anyio
    async def test_referrers_by_subject_and_repository(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject, other = random_image(seed=22).manifest, random_index(seed=23).manifest
        signature = random_artifact(
            subject, seed=24, artifact_type=None, config_media_type="application/vnd.example.sig"
        )
        sboms = [random_artifact(subject, seed=25 + i) for i in range(3)]
        elsewhere = random_artifact(other, seed=30)
        for artifact in (*sboms, signature, elsewhere):
            await manifest_store.put_manifest("app", artifact.manifest)
        await manifest_store.put_manifest("app", sboms[0].manifest)  # idempotent
        await manifest_store.put_manifest("app", subject)
        await manifest_store.put_manifest("other", elsewhere.manifest)
        found = await index.referrers("app", subject.digest)
        expected = sorted(
            (a.manifest.referrer() for a in (*sboms, signature)), key=lambda d: str(d.digest)
        )
        assert found == expected
        assert signature.manifest.referrer() in found
        assert signature.manifest.referrer().artifact_type == "application/vnd.example.sig"
        assert await index.referrers("app", other.digest) == [elsewhere.manifest.referrer()]
        assert await index.referrers("other", other.digest) == [elsewhere.manifest.referrer()]
        assert await index.referrers("other", subject.digest) == []
        assert await index.referrers("nowhere", subject.digest) == []
        # A referrer is not a referrer of itself, nor is its subject of anything.
        assert await index.referrers("app", sboms[0].manifest.digest) == []

    @pytest.mark.anyio
    async def test_delete_removes_the_referrer(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject = random_image(seed=31).manifest
        first, second = random_artifact(subject, seed=32), random_artifact(subject, seed=33)
        await manifest_store.put_manifest("app", first.manifest)
        await manifest_store.put_manifest("app", second.manifest)
        await manifest_store.put_manifest("app", subject)
        assert await manifest_store.delete_manifest("app", first.manifest.digest) is True
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]
        # Deleting the subject leaves its referrers (as the distribution-spec allows).
        assert await manifest_store.delete_manifest("app", subject.digest) is True
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]
        assert await manifest_store.delete_manifest("app", second.manifest.digest) is True
        assert await index.referrers("app", subject.digest) == []
        assert await manifest_store.delete_manifest("app", second.manifest.digest) is False
        assert await manifest_store.repositories() == []
        await manifest_store.put_manifest("app", second.manifest)
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]

    @pytest.mark.anyio
    async def test_referrers_of_a_sha512_subject(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject = Descriptor(OCI_MANIFEST, Digest.from_bytes(b"elsewhere", "sha512"), 9)
        artifact = random_artifact(subject, seed=34)
        await manifest_store.put_manifest("app", artifact.manifest)
        assert await index.referrers("app", subject.digest) == [artifact.manifest.referrer()]
        assert await index.referrers("app", str(subject.digest)) == [  # type: ignore[arg-type]
            artifact.manifest.referrer()
        ]

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", ["", "Upper", "../x", "a//b"])
    async def test_referrers_invalid_repository(
        self, manifest_store: ManifestStore, bad: str
    ) -> None:
        index = self._referrers_index(manifest_store)
        with pytest.raises(NameInvalid):
            await index.referrers(bad, Digest.from_bytes(b"x"))

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_DIGESTS)
    async def test_referrers_invalid_digest(self, manifest_store: ManifestStore, bad: str) -> None:
        index = self._referrers_index(manifest_store)
        with pytest.raises(DigestInvalid):
            await index.referrers("app", _bad(bad))
        assert await manifest_store.repositories() == []

    # --- usage and origin (optional: ManifestUsageLog) ------------------------------------

    @staticmethod
    def _usage_log(store: ManifestStore) -> ManifestUsageLog:
        if not isinstance(store, ManifestUsageLog):
            pytest.skip("the store has no manifest usage log (ManifestUsageLog)")
        return store

    @pytest.mark.anyio
    async def test_cached_manifests_listed_used_and_removed(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        assert await log.cached_manifests() == []
        old, recent = random_image(seed=50).manifest, random_index(seed=51).manifest
        for manifest, at in ((old, 100.0), (recent, 110.0)):
            await manifest_store.put_manifest("a/b", manifest)
            await log.mark_manifest("a/b", manifest.digest, source="hub", at=at)
        await log.mark_manifest("a/b", old.digest, source="other", at=120.0)  # first origin stays
        log.touch_manifest("a/b", recent.digest, 130.0)
        log.touch_manifest("a/b", recent.digest, 125.0)  # older: ignored
        expected = [
            CachedManifest("a/b", old.digest, old.size, "hub", 100.0, 100.0),
            CachedManifest("a/b", recent.digest, recent.size, "hub", 110.0, 130.0),
        ]
        assert await log.cached_manifests() == expected
        await log.flush()
        assert await log.cached_manifests() == expected
        assert await log.remove_cached_manifest("a/b", recent.digest, unused_since=129.0) is False
        assert await log.remove_cached_manifest("other", old.digest, unused_since=200.0) is False
        assert await log.remove_cached_manifest("a/b", old.digest, unused_since=100.0) is True
        assert await manifest_store.get_manifest("a/b", old.digest) is None
        assert await log.cached_manifests() == expected[1:]
        assert await log.remove_cached_manifest("a/b", old.digest, unused_since=math.inf) is False

    @pytest.mark.anyio
    async def test_pushed_and_unmarked_manifests_are_never_removed(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        pushed, upgraded, unmarked = (random_image(seed=52 + i).manifest for i in range(3))
        await log.mark_manifest("app", pushed.digest, source=None, at=1.0)
        await manifest_store.put_manifest("app", pushed)
        await log.mark_manifest("app", pushed.digest, source="hub", at=2.0)
        await manifest_store.put_manifest("app", upgraded)
        await log.mark_manifest("app", upgraded.digest, source="hub", at=1.0)
        await log.mark_manifest("app", upgraded.digest, source=None, at=3.0)
        await manifest_store.put_manifest("app", unmarked)
        assert await log.cached_manifests() == []
        for manifest in (pushed, upgraded, unmarked):
            removed = await log.remove_cached_manifest(
                "app", manifest.digest, unused_since=math.inf
            )
            assert removed is False
            assert await manifest_store.get_manifest("app", manifest.digest) == manifest

    @pytest.mark.anyio
    async def test_removing_a_cached_referrer_unindexes_it(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        subject = random_image(seed=55).manifest
        signature = random_artifact(subject, seed=56)
        await manifest_store.put_manifest("app", signature.manifest)
        await log.mark_manifest("app", signature.manifest.digest, source="hub", at=1.0)
        removed = await log.remove_cached_manifest(
            "app", signature.manifest.digest, unused_since=1.0
        )
        assert removed is True
        if isinstance(manifest_store, ReferrersIndex):
            assert await manifest_store.referrers("app", subject.digest) == []
        assert await manifest_store.repositories() == []

    @pytest.mark.anyio
    async def test_manifest_usage_log_refuses_bad_input(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        digest = Digest.from_bytes(b"{}")
        with pytest.raises(NameInvalid):
            await log.mark_manifest("../x", digest, source="hub", at=1.0)
        with pytest.raises(NameInvalid):
            log.touch_manifest("Upper", digest, 1.0)
        with pytest.raises(DigestInvalid):
            await log.remove_cached_manifest("app", _bad("sha256:short"), unused_since=1.0)
        with pytest.raises(ValueError):
            await log.mark_manifest("app", digest, source="hub", at=_bad(math.nan))
        with pytest.raises(ValueError):
            await log.mark_manifest("app", digest, source="", at=1.0)
        assert await log.cached_manifests() == []

    @pytest.mark.anyio
    async def test_manifest_usage_survives_a_restart(
        self, manifest_store: ManifestStore, manifest_store_factory: ManifestStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        log = self._usage_log(manifest_store)
        manifest = random_image(seed=57).manifest
        await manifest_store.put_manifest("a/b", manifest)
        await log.mark_manifest("a/b", manifest.digest, source="hub", at=5.0)
        log.touch_manifest("a/b", manifest.digest, 9.0)
        await log.flush()
        reopened = self._usage_log(await make_store(manifest_store_factory))
        assert await reopened.cached_manifests() == [
            CachedManifest("a/b", manifest.digest, manifest.size, "hub", 5.0, 9.0)
        ]

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

    @pytest.mark.anyio
    async def test_referrers_survive_a_restart(
        self, manifest_store: ManifestStore, manifest_store_factory: ManifestStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        self._referrers_index(manifest_store)
        subject = random_image(seed=35).manifest
        kept, doomed = random_artifact(subject, seed=36), random_artifact(subject, seed=37)
        await manifest_store.put_manifest("a/b", kept.manifest)
        await manifest_store.put_manifest("a/b", doomed.manifest)
        store = await make_store(manifest_store_factory)
        assert store is not manifest_store
        reopened = self._referrers_index(store)
        expected = sorted(
            (kept.manifest.referrer(), doomed.manifest.referrer()), key=lambda d: str(d.digest)
        )
        assert await reopened.referrers("a/b", subject.digest) == expected
        assert await manifest_store.delete_manifest("a/b", doomed.manifest.digest) is True
        assert await reopened.referrers("a/b", subject.digest) == [kept.manifest.referrer()]
