"""Blobs over HTTP: ``HEAD`` for size, ``GET`` with the Range protocol, resume.

distribution-spec "Pulling blobs": ``GET /v2/<name>/blobs/<digest>`` answers
200 with the whole blob, or 206 with ``Content-Range: bytes <start>-<end>/<size>``
to a ``Range: bytes=<start>-`` request; 416 when the range starts past the
end. A server may ignore ``Range`` and answer 200 from byte 0: the body
skips what the caller did not ask for.

The bytes are read raw: a ``Content-Encoding`` the upstream adds is never
undone, since a blob's digest is of its stored bytes (a gzip layer is
already gzip; decoding it would make it fail its digest).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator

import attrs
import httpx

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import base_media_type
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect._verify import DigestVerifier, PipelinedVerifier
from dockerconnect.errors import DigestMismatch, RangeInvalid, UpstreamError, UpstreamTimeout
from dockerconnect.http._client import REDIRECTS, Client
from dockerconnect.http._errors import Where

__all__ = ["Blobs", "DigestTarget", "parse_length", "where"]

logger = logging.getLogger("dockerconnect.http")

_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
_HTML = frozenset({"text/html", "application/xhtml+xml"})


@attrs.frozen(slots=True)
class DigestTarget:
    """Content named by a digest in one repository (a blob, or the subject of
    a referrers listing): where to ask, and in which scope."""

    url: str
    scope: str
    repository: str
    digest: Digest


def parse_length(value: str | None) -> int | None:
    """A ``Content-Length``-like header as a non-negative int; ``None`` if unusable.

    ASCII digits only, and at most 19 of them: ``int()`` accepts Unicode
    digits and has a 4,300-digit limit that raises.
    """
    if value is None:
        return None
    value = value.strip()
    if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()):
        return None
    return int(value)


class Blobs:
    """Stat and open blobs through one :class:`Client`; owns the hashing threads."""

    def __init__(self, client: Client, *, source: str, max_resumes: int, verify: bool) -> None:
        self.client = client
        self.failures = client.failures
        self.source = source
        self.max_resumes = max_resumes
        self.verify = verify
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The hashing threads, made on first use.

        Per instance (no hidden shared state); two threads serve the 2-core
        machines this is tuned for, each download keeping one job queued.
        """
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"dockerconnect-hash-{self.source}"
            )
        return self._pool

    def close(self) -> None:
        """Release the hashing threads."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    async def stat(self, target: DigestTarget) -> Descriptor | None:
        """``HEAD`` the blob; a redirect is answered by a one-byte ranged GET.

        Object storage's pre-signed URLs are often valid for GET only. A 200
        that is an HTML page (a login page, a proxy's error) is not the blob.
        """
        response = await self.client.send(
            "HEAD", target.url, scope=target.scope, follow=False, **where(target)
        )
        await response.aclose()
        if await self.client.absent(response):
            return None
        if response.status_code in REDIRECTS:
            return self._described(target, await self._size_by_range(target))
        if response.status_code != 200:
            await self.client.fail(response, target.repository, target.digest)
        self._refuse_html(response, target)
        header = self.failures.digest_header(response, target.repository, target.digest)
        if header is not None and header != target.digest:
            raise self.failures.error(
                f"upstream says blob has digest {header}", cls=DigestMismatch, **where(target)
            )
        size = parse_length(response.headers.get("content-length"))
        if size is None:
            size = await self._size_by_range(target)
        return self._described(target, size)

    async def open(self, target: DigestTarget, offset: int) -> BlobStream | None:
        """The blob from ``offset``; see ``HttpConnector.open_blob``."""
        response = await self.request(target, offset)
        try:
            if await self.client.absent(response):
                await response.aclose()
                return None
            if response.status_code == 416:
                await response.aclose()
                return await self._past_end(target, offset)
            if response.status_code not in (200, 206):
                await self.client.fail(response, target.repository, target.digest)
            size, start = self.window(response, target, offset, None)
        except BaseException:
            await response.aclose()
            raise
        body = _BlobBody(self, target, size, offset, response, start)
        return BlobStream(target.digest, size, body, offset=offset, source=self.source)

    async def request(self, target: DigestTarget, offset: int) -> httpx.Response:
        """``GET`` the blob from ``offset`` (with ``Range`` past 0)."""
        # identity: a transfer-compressed blob would not hash to its digest.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return await self.client.send(
            "GET", target.url, scope=target.scope, headers=headers, streaming=True, **where(target)
        )

    async def resume(
        self, target: DigestTarget, position: int, size: int
    ) -> tuple[httpx.Response, int]:
        """A new response from ``position``, and the blob position it starts at."""
        response = await self.request(target, position)
        try:
            if response.status_code in (200, 206):
                return response, self.window(response, target, position, size)[1]
            if await self.client.absent(response):
                raise self.failures.error(
                    "blob disappeared upstream while it was being downloaded", **where(target)
                )
            await self.client.fail(response, target.repository, target.digest)
        except BaseException:
            await response.aclose()
            raise

    def window(
        self, response: httpx.Response, target: DigestTarget, offset: int, size: int | None
    ) -> tuple[int, int]:
        """Check a blob answer; return (total size, position of its first byte).

        A ``206`` must start at ``offset``; a ``200`` (a server that ignores
        ``Range``) starts at 0, and the caller skips what it does not need.
        """
        self._refuse_html(response, target)
        if response.status_code == 206:
            total, start = self._content_range(response, target, offset), offset
        else:
            length = parse_length(response.headers.get("content-length"))
            if length is None:
                raise self.failures.error(
                    "upstream sent a blob without Content-Length", **where(target)
                )
            total, start = length, 0
        if size is not None and total != size:
            raise self.failures.error(
                f"upstream changed the blob's size from {size} to {total} while resuming",
                **where(target),
            )
        if offset > total:
            raise RangeInvalid(
                f"offset {offset} is past the end of the {total} byte blob", **where(target)
            )
        return total, start

    def _content_range(self, response: httpx.Response, target: DigestTarget, offset: int) -> int:
        value = response.headers.get("content-range", "").strip()
        match = _CONTENT_RANGE.fullmatch(value)
        if match is None or match.group(3) == "*" or int(match.group(1)) != offset:
            raise self.failures.error(
                f"upstream answered a range request with an unusable Content-Range {value[:100]!r}",
                **where(target),
            )
        return int(match.group(3))

    def _refuse_html(self, response: httpx.Response, target: DigestTarget) -> None:
        content_type = base_media_type(response.headers.get("content-type", ""))
        if content_type in _HTML:
            raise self.failures.error(
                f"upstream answered {response.status_code} with an HTML page instead of blob bytes",
                **where(target),
            )

    def _described(self, target: DigestTarget, size: int | None) -> Descriptor | None:
        if size is None:
            return None
        return Descriptor("application/octet-stream", target.digest, size)

    async def _past_end(self, target: DigestTarget, offset: int) -> BlobStream | None:
        found = await self.stat(target)
        if found is None:
            return None
        if offset != found.size:
            raise RangeInvalid(
                f"offset {offset} is past the end of the {found.size} byte blob",
                **where(target),
            )
        return BlobStream(target.digest, found.size, _empty(), offset=offset, source=self.source)

    async def _size_by_range(self, target: DigestTarget) -> int | None:
        headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
        response = await self.client.send(
            "GET", target.url, scope=target.scope, headers=headers, **where(target)
        )
        try:
            if await self.client.absent(response):
                return None
            if response.status_code not in (200, 206):
                await self.client.fail(response, target.repository, target.digest)
            self._refuse_html(response, target)
            if response.status_code == 206:
                return self._content_range(response, target, 0)
            length = parse_length(response.headers.get("content-length"))
        finally:
            await response.aclose()
        if length is None:
            raise self.failures.error("upstream did not say how large the blob is", **where(target))
        return length


def where(target: DigestTarget) -> Where:
    """What an error about ``target`` names."""
    return Where(repository=target.repository, digest=target.digest)


class _Cursor:
    """Where one download stands: bytes fed to the verifier, bytes delivered."""

    __slots__ = ("delivered", "fed")

    def __init__(self, fed: int, delivered: int) -> None:
        self.fed = fed
        self.delivered = delivered


class _BlobBody:
    """The chunks of one blob download: verified, resumed, and closable even
    when never iterated (so the response it holds is always released)."""

    def __init__(
        self,
        blobs: Blobs,
        target: DigestTarget,
        size: int,
        offset: int,
        response: httpx.Response,
        start: int,
    ) -> None:
        self._blobs = blobs
        self._target = target
        self._size = size
        self._offset = offset
        self._response: httpx.Response | None = response
        self._start = start
        self._deferred = False
        self._iterator: AsyncGenerator[bytes, None] | None = None

    def defer_verification(self) -> None:
        """The consumer hashes these bytes: count them, do not hash them."""
        self._deferred = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return self._iterator

    async def aclose(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            await iterator.aclose()
        if self._response is not None:
            response, self._response = self._response, None
            await response.aclose()

    def _verifier(self) -> PipelinedVerifier:
        # Only a download that starts at byte 0 can be hashed; with a server
        # that answers a ranged GET with the whole blob (200), it does.
        hashing = self._blobs.verify and not self._deferred and self._start == 0
        verifier = DigestVerifier(self._target.digest, self._size - self._start, hashing=hashing)
        return PipelinedVerifier(verifier, self._blobs.pool())

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        verifier = self._verifier()
        cursor = _Cursor(self._start, self._offset)
        held: bytes | None = None
        resumes = 0
        while True:
            failure: UpstreamError | None = None
            try:
                async with contextlib.aclosing(self._pieces(cursor, verifier)) as pieces:
                    async for piece in pieces:
                        if not verifier.verifier.hashing:
                            yield piece
                            continue
                        if held is not None:
                            yield held  # the last piece waits for the digest check
                        held = piece
            except DigestMismatch as exc:
                raise self._blobs.failures.error(
                    f"upstream sent bytes that fail the blob's check: {exc.message}",
                    cls=type(exc),
                    **where(self._target),
                ) from exc
            except UpstreamError as exc:
                failure = exc
            if cursor.delivered >= self._size and cursor.fed >= self._size:
                break
            resumes = await self._resume(cursor, failure, resumes)
        try:
            await verifier.verify()
        except DigestMismatch as exc:
            raise self._blobs.failures.error(
                f"upstream sent {self._size} bytes that fail the blob's check: {exc.message}",
                cls=type(exc),
                **where(self._target),
            ) from exc
        if held is not None:
            yield held

    async def _pieces(
        self, cursor: _Cursor, verifier: PipelinedVerifier
    ) -> AsyncGenerator[bytes, None]:
        """This response's new bytes in chunks of ``CHUNK_SIZE``, fed to the
        verifier; bytes buffered when the transfer breaks are still delivered."""
        response = self._response
        assert response is not None
        self._response = None
        at = self._start  # blob position of the next byte this response sends
        buffer: list[bytes] = []
        buffered = 0
        raw = self._blobs.client.stream(
            response, repository=self._target.repository, digest=self._target.digest
        )
        broke: UpstreamError | None = None
        try:
            async with contextlib.aclosing(raw):
                async for chunk in raw:
                    while buffered + len(chunk) >= CHUNK_SIZE:
                        # Cut the incoming chunk, not the buffer: a small copy.
                        need = CHUNK_SIZE - buffered
                        buffer.append(chunk[:need])
                        chunk = chunk[need:]
                        data, buffer, buffered = b"".join(buffer), [], 0
                        piece = await _take(data, at, cursor, verifier)
                        at += len(data)
                        if piece:
                            yield piece
                    if chunk:
                        buffer.append(chunk)
                        buffered += len(chunk)
        except UpstreamError as exc:
            broke = exc
        # Ended, or broke: what arrived is kept either way, and a resume asks
        # only for what is still missing.
        piece = await _take(b"".join(buffer), at, cursor, verifier) if buffer else b""
        if piece:
            yield piece
        if broke is not None:
            raise broke

    async def _resume(self, cursor: _Cursor, failure: UpstreamError | None, resumes: int) -> int:
        size, position = self._size, cursor.delivered
        if resumes >= self._blobs.max_resumes or isinstance(failure, UpstreamTimeout):
            error = self._blobs.failures.error(
                f"transfer broke at byte {position} of {size} "
                f"after {resumes} resume(s)" + (f": {failure.message}" if failure else ""),
                cls=UpstreamTimeout if isinstance(failure, UpstreamTimeout) else UpstreamError,
                **where(self._target),
            )
            # The httpx exception, if any, stays reachable as the cause.
            raise error from (failure.__cause__ or failure) if failure else None
        logger.info(
            "%s: blob %s broke at byte %d of %d (%s); resuming",
            self._blobs.source,
            self._target.digest,
            position,
            size,
            failure.message if failure else "short body",
        )
        self._response, self._start = await self._blobs.resume(self._target, position, size)
        return resumes + 1


async def _take(data: bytes, at: int, cursor: _Cursor, verifier: PipelinedVerifier) -> bytes:
    """Feed the not-yet-fed part of ``data`` (which starts at blob position
    ``at``) to the verifier; return its not-yet-delivered part."""
    end = at + len(data)
    if end > cursor.fed:
        await verifier.feed(data[max(0, cursor.fed - at) :])
        cursor.fed = end
    if end <= cursor.delivered:
        return b""
    piece = data[max(0, cursor.delivered - at) :]
    cursor.delivered = end
    return piece


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover  (makes this an async generator)
