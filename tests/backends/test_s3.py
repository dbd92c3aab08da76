"""``S3BlobStore`` against moto in server mode: the conformance suite, plus what
only an object store promises (multipart parts, aborts, nothing visible early)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest
from backend_servers import MotoServer, unique

from dockerconnect._digest import Digest
from dockerconnect._protocols import BlobStore
from dockerconnect.errors import DigestMismatch, InvalidInput, SizeInvalid, StorageError
from dockerconnect.testing import BlobStoreConformance, BlobStoreFactory, random_blob

pytest.importorskip("aiobotocore")
from dockerconnect.s3 import MIN_PART_SIZE, S3BlobStore


def leftovers(moto: MotoServer, bucket: str, prefix: str = "") -> list[str]:
    """Unfinished uploads, and objects that are not blobs, in ``bucket``."""
    client = moto.client()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    found = [f"upload: {u['Key']}" for u in uploads]
    objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    found += [o["Key"] for o in objects if not o["Key"].startswith(f"{prefix}blobs/")]
    return found


class TestS3BlobStore(BlobStoreConformance):
    persistent = True

    @pytest.fixture
    async def blob_store_factory(
        self, moto_server: MotoServer, bucket: str
    ) -> AsyncIterator[BlobStoreFactory]:
        made: list[S3BlobStore] = []

        def make() -> BlobStore:
            # The minimum part size, so the conformance blobs of a few MiB
            # go through real multipart uploads.
            store = S3BlobStore(
                bucket, prefix="conf", part_size=MIN_PART_SIZE, **moto_server.store_args()
            )
            made.append(store)
            return store

        self._moto, self._bucket = moto_server, bucket
        yield make
        for store in made:
            await store.aclose()

    def blob_store_leftovers(self, store: BlobStore) -> Iterable[object]:
        return leftovers(self._moto, self._bucket, "conf/")


@pytest.fixture
async def store(moto_server: MotoServer, bucket: str) -> AsyncIterator[S3BlobStore]:
    async with S3BlobStore(bucket, part_size=MIN_PART_SIZE, **moto_server.store_args()) as s:
        yield s


def objects(moto: MotoServer, bucket: str) -> dict[str, int]:
    listed = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["Size"] for o in listed}


def uploads(moto: MotoServer, bucket: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )
    return found


@pytest.mark.anyio
async def test_layout_and_multipart_parts(
    store: S3BlobStore, moto_server: MotoServer, bucket: str
) -> None:
    data = random_blob(3 * MIN_PART_SIZE + 1234, 1)
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        for start in range(0, len(data), 1 << 20):
            await writer.write(data[start : start + (1 << 20)])
        # Three full parts went out (the last may still be on its way);
        # nothing is visible under the key yet.
        assert objects(moto_server, bucket) == {}
        (upload,) = uploads(moto_server, bucket)
        assert upload["Key"] == f"blobs/sha256/{digest.hex}"
        parts = moto_server.client().list_parts(
            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )["Parts"]
        assert [p["Size"] for p in parts][:2] == [MIN_PART_SIZE, MIN_PART_SIZE]
        await writer.commit()
    assert objects(moto_server, bucket) == {f"blobs/sha256/{digest.hex}": len(data)}
    assert uploads(moto_server, bucket) == []
    body = moto_server.client().get_object(Bucket=bucket, Key=f"blobs/sha256/{digest.hex}")
    assert body["Body"].read() == data


@pytest.mark.anyio
async def test_wrong_bytes_abort_the_upload(
    store: S3BlobStore, moto_server: MotoServer, bucket: str
) -> None:
    data = random_blob(MIN_PART_SIZE + 10, 2)
    digest = Digest.from_bytes(data)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(DigestMismatch) as info:
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(wrong)
            assert len(uploads(moto_server, bucket)) == 1
            await writer.commit()
    assert not isinstance(info.value, SizeInvalid)
    assert uploads(moto_server, bucket) == []
    assert objects(moto_server, bucket) == {}
    assert await store.stat(digest) is None


@pytest.mark.anyio
async def test_cancelled_multipart_ingest_is_aborted(
    store: S3BlobStore, moto_server: MotoServer, bucket: str
) -> None:
    data = random_blob(MIN_PART_SIZE, 3)
    digest = Digest.from_bytes(data * 3)
    with anyio.move_on_after(60) as scope:
        async with store.ingest(digest) as writer:
            await writer.write(data)
            assert len(uploads(moto_server, bucket)) == 1
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert uploads(moto_server, bucket) == []
    assert objects(moto_server, bucket) == {}


@pytest.mark.anyio
async def test_memory_is_bounded_by_the_part_size(store: S3BlobStore) -> None:
    # The writer holds at most the part filling, one part in flight and the
    # write in hand, whatever the size.
    data = random_blob(MIN_PART_SIZE, 4)
    digest = Digest.from_bytes(data * 4)
    async with store.ingest(digest, 4 * len(data)) as writer:
        for _ in range(4):
            await writer.write(data)
            assert len(writer._buffer) < MIN_PART_SIZE  # type: ignore[attr-defined]
        await writer.commit()
    stream = await store.open(digest, offset=3 * len(data) + 5)
    assert stream is not None
    async with stream:
        assert await stream.read() == data[5:]


@pytest.mark.anyio
async def test_prefix_keeps_stores_apart(moto_server: MotoServer, bucket: str) -> None:
    data = b"one blob, two prefixes"
    digest = Digest.from_bytes(data)
    args = moto_server.store_args()
    async with (
        S3BlobStore(bucket, prefix="a", **args) as a,
        S3BlobStore(bucket, prefix="b/", **args) as b,
    ):
        async with a.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        assert await b.stat(digest) is None
        assert (await a.stat(digest)) is not None
    assert objects(moto_server, bucket) == {f"a/blobs/sha256/{digest.hex}": len(data)}


@pytest.mark.anyio
async def test_missing_bucket_is_one_line_to_act_on(moto_server: MotoServer) -> None:
    missing = unique("missing")
    async with S3BlobStore(missing, **moto_server.store_args()) as store:
        # HEAD answers carry no error code: a stat must not take the missing
        # bucket for a missing blob.
        with pytest.raises(StorageError) as info:
            await store.stat(Digest.from_bytes(b"x"))
        assert f"bucket {missing!r} does not exist" in str(info.value)
        assert info.value.__cause__ is not None
        # Not remembered: the bucket may be created, and the next call sees it.
        moto_server.client().create_bucket(Bucket=missing)
        assert await store.stat(Digest.from_bytes(b"x")) is None


@pytest.mark.anyio
async def test_unreachable_endpoint(moto_server: MotoServer) -> None:
    args = moto_server.store_args() | {
        "endpoint_url": "http://127.0.0.1:9",
        "config": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    async with S3BlobStore("b", **args) as store:
        with pytest.raises(StorageError) as info:
            await store.open(Digest.from_bytes(b"x"))
    assert "cannot reach S3 at http://127.0.0.1:9" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"part_size": MIN_PART_SIZE - 1}, "part_size"),
        ({"part_size": "big"}, "part_size"),
        ({"addressing_style": "sideways"}, "addressing_style"),
    ],
)
def test_misconfiguration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        S3BlobStore("bucket", **kwargs)


def test_no_bucket() -> None:
    with pytest.raises(InvalidInput, match="bucket"):
        S3BlobStore("")


@pytest.mark.anyio
async def test_streams_closed_unread_release_their_connection(
    moto_server: MotoServer, bucket: str
) -> None:
    # One connection in the pool: a stream that kept it would starve the next.
    data = random_blob(3 << 20, 5)
    digest = Digest.from_bytes(data)
    async with S3BlobStore(bucket, max_connections=1, **moto_server.store_args()) as store:
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        with anyio.fail_after(60):
            for offset in (0, 7, 0, 7):
                stream = await store.open(digest, offset=offset)
                assert stream is not None
                await stream.aclose()  # never iterated
            stream = await store.open(digest, offset=len(data) - 3)
            assert stream is not None
            async with stream:
                assert await stream.read() == data[-3:]
