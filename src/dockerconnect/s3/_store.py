"""``S3BlobStore``: blobs in a bucket of any S3-compatible object store.

Layout: the blob with digest ``sha256:<hex>`` is the object
``<prefix>blobs/sha256/<hex>``, holding exactly its bytes.

Writes stream. Bytes are hashed as they are written and sent in parts of
``part_size`` bytes (S3 requires at least 5 MiB for every part but the
last) through a multipart upload, one part uploading while the next fills,
so memory stays at about two parts per writer whatever the blob's size.
``commit()`` checks digest and size first: only verified content completes
the upload, and an upload that is not completed is aborted. S3 shows
nothing under a key until its multipart upload completes, so a reader never
sees a partial or unverified blob. A blob smaller than one part is sent in
a single ``PutObject`` at commit, after verification.

The client is aiobotocore, the same code that runs against AWS S3, MinIO
and Ceph RGW. aiobotocore runs only on asyncio, so the store keeps it on a
private asyncio loop in a thread of its own
(:class:`~dockerconnect._asyncio_thread.AsyncioThread`); the store itself
works on asyncio and trio alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal

import anyio

from dockerconnect._asyncio_thread import AsyncioThread
from dockerconnect._closing import AsyncClosing
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._protocols import BLOB_MEDIA_TYPE, BlobWriter
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import BlobUploadInvalid, InvalidInput, RangeInvalid, StorageError

try:
    import aiobotocore.session  # type: ignore[import-untyped]
    import aiohttp
    import botocore.exceptions  # type: ignore[import-untyped]
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "dockerconnect.s3 needs aiobotocore: pip install 'dockerconnect[s3]'"
    ) from error

__all__ = ["MIN_PART_SIZE", "S3BlobStore"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: The smallest part S3 accepts for any part of a multipart upload but the last.
MIN_PART_SIZE = 5 * MiB
#: The largest part S3 accepts.
MAX_PART_SIZE = 5 * 1024 * MiB
#: S3 numbers parts 1 to 10 000.
MAX_PARTS = 10_000

_ABSENT = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)


class S3BlobStore(AsyncClosing):
    """A :class:`~dockerconnect.BlobStore` over the S3 API.

    ``bucket`` must exist. ``prefix`` puts every key under a folder-like
    prefix (a ``/`` is added when missing), so several stores can share a
    bucket. ``endpoint_url`` points at MinIO, Ceph RGW or another
    S3-compatible service (``None``: AWS). Credentials left ``None`` come
    from botocore's usual chain (environment, shared files, instance
    roles). ``addressing_style="path"`` is what MinIO and most RGW
    deployments want. ``config`` holds further botocore ``Config`` options
    (timeouts, retries, ``request_checksum_calculation``...).

    Use it as an async context manager, or call :meth:`aclose`, to close
    the client and its thread. ``name`` is what returned streams report as
    their ``source``.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        addressing_style: Literal["auto", "path", "virtual"] = "auto",
        part_size: int = 8 * MiB,
        max_connections: int = 16,
        config: Mapping[str, Any] | None = None,
        name: str = "s3",
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise InvalidInput(f"S3BlobStore needs a bucket name, not {bucket!r}")
        if not isinstance(prefix, str):
            raise InvalidInput(f"S3BlobStore prefix must be a string, not {prefix!r}")
        if isinstance(part_size, bool) or not isinstance(part_size, int):
            raise InvalidInput(f"part_size must be an integer, not {part_size!r}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise InvalidInput(
                f"part_size {part_size} is outside what S3 accepts "
                f"({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)"
            )
        if addressing_style not in ("auto", "path", "virtual"):
            raise InvalidInput(
                f"addressing_style must be 'auto', 'path' or 'virtual', not {addressing_style!r}"
            )
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.name = name
        options: dict[str, Any] = {
            "s3": {"addressing_style": addressing_style},
            "max_pool_connections": max_connections,
        }
        options.update(config or {})
        self._client_args: dict[str, Any] = {
            "region_name": region,
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "aws_session_token": session_token,
            "config": AioConfig(**options),
        }
        self._thread = AsyncioThread(f"S3BlobStore({bucket})")
        # Touched only on the loop thread.
        self._client_ready: asyncio.Future[Any] | None = None
        self._exit_stack = AsyncExitStack()

    def key(self, digest: Digest | str) -> str:
        """The object key that holds ``digest``'s bytes."""
        digest = Digest.parse(digest)
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex}"

    # --- the BlobStore protocol ---------------------------------------------------

    async def stat(self, digest: Digest) -> Descriptor | None:
        digest = Digest.parse(digest)
        size = await self._thread.run(self._head, self.key(digest))
        if size is None:
            return None
        return Descriptor(BLOB_MEDIA_TYPE, digest, size)

    async def open(self, digest: Digest, *, offset: int = 0) -> BlobStream | None:
        digest = Digest.parse(digest)
        _check_offset(offset, digest)
        got = await self._thread.run(self._get, self.key(digest), offset)
        if got is None:
            return None
        size, body = got
        if offset > size:
            raise RangeInvalid(
                f"offset {offset} is outside the blob's {size} bytes", digest=str(digest)
            )
        return BlobStream(digest, size, _Body(self, body), offset=offset, source=self.name)

    def ingest(
        self, digest: Digest, size: int | None = None
    ) -> AbstractAsyncContextManager[BlobWriter]:
        # Validated here, so bad input fails at the call rather than at ``async with``.
        verifier = DigestVerifier(Digest.parse(digest), _check_size(size))
        return self._ingest(verifier)

    async def delete(self, digest: Digest) -> bool:
        digest = Digest.parse(digest)
        return await self._thread.run(self._delete, self.key(digest))

    # --- lifetime -------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client and stop its thread; safe to call more than once."""
        await self._thread.aclose(self._exit_stack.aclose)

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3BlobStore({self.bucket!r}, prefix={self.prefix!r}{where})"

    # --- ingest -----------------------------------------------------------------------

    @asynccontextmanager
    async def _ingest(self, verifier: DigestVerifier) -> AsyncIterator[BlobWriter]:
        writer = _S3Writer(self, verifier)
        try:
            yield writer
        finally:
            with anyio.CancelScope(shield=True):
                await writer.close()

    # --- what runs on the loop thread ---------------------------------------------------

    async def _client(self) -> Any:
        if self._client_ready is None:
            self._client_ready = asyncio.ensure_future(self._open_client())
        ready = self._client_ready
        try:
            return await asyncio.shield(ready)
        except Exception:
            # Not remembered: the next call tries again (the endpoint may come up).
            if self._client_ready is ready:
                self._client_ready = None
            raise

    async def _open_client(self) -> Any:
        """The client, once the bucket has answered: a wrong bucket, endpoint or
        credentials fail the first call with one line to act on, not every
        ``stat`` with "absent"."""
        session = aiobotocore.session.get_session()
        stack = AsyncExitStack()
        client = await stack.enter_async_context(session.create_client("s3", **self._client_args))
        try:
            await client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            await stack.aclose()
            if _error_code(error) in _ABSENT:
                raise self._translate(_NoSuchBucket(), "HeadBucket", "") from error
            raise self._translate(error, "HeadBucket", "") from error
        self._exit_stack.push_async_exit(stack)
        return client

    async def _head(self, key: str) -> int | None:
        client = await self._client()
        try:
            response = await client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _error_code(error) in _ABSENT:
                return None
            raise self._translate(error, "HeadObject", key) from error
        return int(response["ContentLength"])

    async def _get(self, key: str, offset: int) -> tuple[int, Any] | None:
        """``(size, body)`` from ``offset``; body ``None`` when nothing is left."""
        client = await self._client()
        try:
            if offset == 0:
                response = await client.get_object(Bucket=self.bucket, Key=key)
                return int(response["ContentLength"]), response["Body"]
            response = await client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-"
            )
        except Exception as error:
            code = _error_code(error)
            if code in _ABSENT:
                return None
            if code in ("InvalidRange", "416"):
                # Past the end, or exactly at it: an empty range is not a
                # valid HTTP range, so ask for the size instead.
                size = await self._head(key)
                return None if size is None else (size, None)
            raise self._translate(error, "GetObject", key) from error
        total = _range_total(response.get("ContentRange"))
        if total is None:
            # A server that ignored the Range header sent the whole object.
            response["Body"].close()
            raise StorageError(
                f"S3 endpoint ignored the Range header for {key!r}: it cannot serve offsets"
            )
        return total, response["Body"]

    async def _read(self, body: Any) -> bytes:
        """Up to ``CHUNK_SIZE`` bytes from ``body``; ``b""`` at its end."""
        parts: list[bytes] = []
        have = 0
        try:
            while have < CHUNK_SIZE:
                part = await body.read(CHUNK_SIZE - have)
                if not part:
                    break
                parts.append(part)
                have += len(part)
        except Exception as error:
            raise self._translate(error, "GetObject", "a blob body") from error
        return b"".join(parts)

    @staticmethod
    async def _close_body(body: Any) -> None:
        body.close()

    async def _delete(self, key: str) -> bool:
        if await self._head(key) is None:
            return False
        client = await self._client()
        try:
            await client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            raise self._translate(error, "DeleteObject", key) from error
        return True

    async def _put(self, key: str, data: bytes) -> None:
        client = await self._client()
        try:
            await client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as error:
            raise self._translate(error, "PutObject", key) from error

    async def _start_upload(self, key: str) -> str:
        client = await self._client()
        try:
            response = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
        except Exception as error:
            raise self._translate(error, "CreateMultipartUpload", key) from error
        return str(response["UploadId"])

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        client = await self._client()
        try:
            response = await client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        except Exception as error:
            raise self._translate(error, "UploadPart", key) from error
        return str(response["ETag"])

    async def _spawn_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> asyncio.Task[str]:
        return asyncio.ensure_future(self._upload_part(key, upload_id, number, data))

    async def _complete(self, key: str, upload_id: str, etags: list[str]) -> None:
        client = await self._client()
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, start=1)]
        try:
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as error:
            raise self._translate(error, "CompleteMultipartUpload", key) from error

    async def _abort(self, key: str, upload_id: str) -> None:
        client = await self._client()
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:
            # The upload stays invisible either way; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) reclaims what could not be aborted.
            log.warning("could not abort S3 upload %s of %r", upload_id, key, exc_info=True)

    def _translate(self, error: Exception, operation: str, key: str) -> StorageError:
        """One place where client errors become :class:`StorageError`, with a line to act on."""
        code = _error_code(error)
        where = self.endpoint_url or "AWS S3"
        if code == "NoSuchBucket":
            return StorageError(
                f"S3 bucket {self.bucket!r} does not exist at {where}: create it or fix the bucket"
            )
        if code in _DENIED:
            return StorageError(
                f"S3 at {where} refused {operation} on {self.bucket}/{key} ({code}): "
                "check the credentials and the bucket policy"
            )
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return StorageError(
                f"no S3 credentials for {where}: set access_key_id/secret_access_key "
                "or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables"
            )
        if isinstance(error, botocore.exceptions.EndpointConnectionError | aiohttp.ClientError):
            return StorageError(f"cannot reach S3 at {where} for {operation}: {error}")
        return StorageError(f"S3 {operation} of {self.bucket}/{key} failed: {error}")


class _Body:
    """A GET response's body as chunks of at most ``CHUNK_SIZE`` bytes.

    Not an async generator: ``aclose()`` must release the connection even
    when the stream is closed before it was ever iterated (an async
    generator that never started skips its ``finally``).
    """

    __slots__ = ("_body", "_store")

    def __init__(self, store: S3BlobStore, body: Any) -> None:
        self._store = store
        self._body = body

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._body is None:
            raise StopAsyncIteration
        chunk = await self._store._thread.run(self._store._read, self._body)
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with anyio.CancelScope(shield=True):
                await self._store._thread.run(self._store._close_body, body)


class _S3Writer:
    """Hashes what it is given and sends it on in parts of ``store.part_size`` bytes.

    One part uploads while the next fills: the writer holds at most the part
    in flight, the part filling and the write in hand.
    """

    __slots__ = (
        "_buffer",
        "_etags",
        "_in_flight",
        "_key",
        "_state",
        "_store",
        "_upload_id",
        "_verifier",
    )

    def __init__(self, store: S3BlobStore, verifier: DigestVerifier) -> None:
        self._store = store
        self._verifier = verifier
        self._key = store.key(verifier.digest)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._etags: list[str] = []
        # The part uploading now: an asyncio task on the store's loop thread.
        self._in_flight: asyncio.Task[str] | None = None
        self._state = "open"

    @property
    def written(self) -> int:
        return self._verifier.count

    async def write(self, data: bytes) -> None:
        _check_writable(self._state, self._verifier.digest)
        try:
            await self._verifier.aupdate(data)
            self._buffer += data
            while len(self._buffer) >= self._store.part_size:
                part = bytes(self._buffer[: self._store.part_size])
                del self._buffer[: self._store.part_size]
                await self._send(part)
        except BaseException:
            self._fail()
            raise

    async def _send(self, part: bytes) -> None:
        """Start uploading ``part`` once the part before it has landed."""
        run = self._store._thread.run
        await self._land()
        if self._upload_id is None:
            self._upload_id = await run(self._store._start_upload, self._key)
        if len(self._etags) >= MAX_PARTS:
            raise StorageError(
                f"blob is larger than {MAX_PARTS} parts of {self._store.part_size} bytes: "
                "raise part_size",
                digest=str(self._verifier.digest),
            )
        number = len(self._etags) + 1
        self._in_flight = await run(
            self._store._spawn_part, self._key, self._upload_id, number, part
        )

    async def _land(self) -> None:
        """Wait for the part in flight, if any, and record its ETag."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            self._etags.append(await self._store._thread.run(_join, task))

    async def commit(self) -> Descriptor:
        _check_writable(self._state, self._verifier.digest)
        run = self._store._thread.run
        try:
            # Verified before anything becomes visible under the key.
            self._verifier.verify()
            self._state = "committing"
            if self._upload_id is None:
                await run(self._store._put, self._key, bytes(self._buffer))
            else:
                if self._buffer:
                    await self._send(bytes(self._buffer))
                await self._land()
                await run(self._store._complete, self._key, self._upload_id, self._etags)
                self._upload_id = None
        except BaseException:
            self._fail()
            raise
        self._buffer.clear()
        self._state = "committed"
        return Descriptor(BLOB_MEDIA_TYPE, self._verifier.digest, self._verifier.count)

    def _fail(self) -> None:
        self._state = "failed"
        self._buffer.clear()

    async def close(self) -> None:
        """Abort an upload that was not completed; the writer is unusable afterwards."""
        if self._state in ("open", "committing"):
            self._state = "closed"
        self._buffer.clear()
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await self._store._thread.run(_cancel, task)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            await self._store._thread.run(self._store._abort, self._key, upload_id)


async def _join(task: asyncio.Task[str]) -> str:
    return await task


async def _cancel(task: asyncio.Task[str]) -> None:
    task.cancel()
    # Whatever it ended with is moot: the upload is being aborted.
    with contextlib.suppress(BaseException):
        await task


# The same checks, with the same errors, as the shipped stores make.


def _check_offset(offset: int, digest: Digest) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise RangeInvalid(f"offset must be an integer, not {type(offset).__name__}")
    if offset < 0:
        raise RangeInvalid(f"offset {offset} is negative", digest=str(digest))


def _check_size(size: int | None) -> int | None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidInput(f"blob size must be a non-negative integer or None, not {size!r}")
    return size


def _check_writable(state: str, digest: Digest) -> None:
    if state != "open":
        raise BlobUploadInvalid(
            f"the blob writer is {state}; start a new ingest", digest=str(digest)
        )


class _NoSuchBucket(Exception):
    """What a HEAD of a missing bucket means (HEAD answers carry no error code)."""


def _error_code(error: BaseException) -> str | None:
    if isinstance(error, _NoSuchBucket):
        return "NoSuchBucket"
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) or None
    return None


def _range_total(content_range: str | None) -> int | None:
    # "bytes 5-99/100" -> 100
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None
