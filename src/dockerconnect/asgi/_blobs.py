"""``GET|HEAD|DELETE /v2/<name>/blobs/<digest>``, with byte ranges.

A blob streams from its ``BlobStream`` in chunks of at most 1 MiB, or, when
the ASGI server offers ``http.response.pathsend`` and the bytes come whole
from this registry's own file, as that file. ``Range`` (RFC 9110 14.2) is
honoured for one range; numbers in it are ASCII digits of any length (a
start past any blob is 416, an end past the blob is clamped), never
``int()`` of an unbounded string. A ``Range`` the server cannot parse, or
one with several ranges, is ignored and the whole blob served, as RFC 9110
allows; one whose last byte comes before its first is 416. A range is asked
of the registry with its ``length`` where ``open_blob`` takes one (the
Resolver's does), so a range of a blob not yet held is served only once the
whole blob is verified: never a wrong byte in a 206. ``DELETE`` calls the
registry's ``delete_blob`` when it has one.
"""

from __future__ import annotations

import os
import re
from typing import Any

from dockerconnect import BlobStream, Digest
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._errors import Failed, MethodNotAllowed
from dockerconnect.asgi._http import Headers, Request, Response, h
from dockerconnect.asgi._routing import not_allowed
from dockerconnect.errors import RangeInvalid

__all__ = ["blob", "blob_headers", "bounded_int"]

_OCTET = b"application/octet-stream"
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
#: Larger than any blob: what a number of more than 19 digits stands for.
_HUGE = 2**63


def bounded_int(digits: str) -> int:
    """An ASCII digit string as an int, saturating at 2**63 (no 4,300-digit limit)."""
    significant = digits.lstrip("0")
    if len(significant) > 19:
        return _HUGE
    return min(int(significant or "0"), _HUGE)


def blob_headers(digest: Digest | str, length: int) -> Headers:
    value = h(digest)
    return [
        (b"content-type", _OCTET),
        (b"content-length", b"%d" % length),
        (b"docker-content-digest", value),
        (b"accept-ranges", b"bytes"),
        (b"etag", b'"%s"' % value),
    ]


def _parse_range(value: str | None) -> tuple[int | None, int | None] | None:
    """``(first, last)`` from ``bytes=first-last`` (either may be absent); None to ignore."""
    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first = bounded_int(match.group(1)) if match.group(1) else None
    last = bounded_int(match.group(2)) if match.group(2) else None
    return first, last


def _resolve_range(
    wanted: tuple[int | None, int | None], size: int, digest: Digest
) -> tuple[int, int]:
    """The inclusive byte range to send; 416 when none of it lies in the blob."""
    first, last = wanted
    if first is not None and last is not None and last < first:
        # An invalid range (RFC 9110 14.1.1): rejected rather than ignored,
        # as the conformance suite prefers ("bytes=500-0").
        raise _unsatisfiable(size, digest)
    if first is None:
        # A suffix range: the last ``last`` bytes.
        if not last or size == 0:
            raise _unsatisfiable(size, digest)
        return max(size - last, 0), size - 1
    if first >= size:
        raise _unsatisfiable(size, digest)
    return first, size - 1 if last is None else min(last, size - 1)


def _unsatisfiable(size: int, digest: Digest) -> Failed:
    error = RangeInvalid(f"the range lies outside the blob's {size} bytes", digest=digest)
    return Failed(error, [(b"content-range", h(f"bytes */{size}"))])


async def blob(ctx: Context, request: Request, response: Response, name: str, ref: str) -> None:
    if request.method == "HEAD":
        digest = Digest.parse(ref)
        descriptor = await ctx.registry.stat_blob(name, digest)
        await response.headers_only(200, blob_headers(digest, descriptor.size))
    elif request.method == "GET":
        await _get(ctx, request, response, name, ref)
    elif request.method == "DELETE":
        delete_blob = getattr(ctx.registry, "delete_blob", None)
        if delete_blob is None:
            raise MethodNotAllowed("deleting blobs is not supported by this registry")
        await delete_blob(name, Digest.parse(ref))
        await response.simple(202, [])
    else:
        not_allowed(request.method, ["GET", "HEAD", "DELETE"])


async def _get(ctx: Context, request: Request, response: Response, name: str, ref: str) -> None:
    wanted = _parse_range(request.header("range"))
    digest = Digest.parse(ref)
    if wanted is None:
        stream = await ctx.registry.open_blob(name, digest)
        headers = blob_headers(digest, stream.size)
        await _send(ctx, request, response, stream, 200, headers, stream.size)
        return
    descriptor = await ctx.registry.stat_blob(name, digest)
    size = descriptor.size
    start, end = _resolve_range(wanted, size, digest)
    stream = await _open_range(ctx, name, digest, start, end - start + 1)
    headers = [
        *blob_headers(digest, end - start + 1),
        (b"content-range", h(f"bytes {start}-{end}/{size}")),
    ]
    await _send(ctx, request, response, stream, 206, headers, end - start + 1)


async def _open_range(
    ctx: Context, name: str, digest: Digest, start: int, length: int
) -> BlobStream:
    """The stream for a range: with ``length`` where the registry takes it, so
    that a registry still fetching the blob serves the range verified."""
    if ctx.open_takes_length:
        open_blob: Any = ctx.registry.open_blob  # Registry's open_blob has no length
        stream: BlobStream = await open_blob(name, digest, offset=start, length=length)
        return stream
    return await ctx.registry.open_blob(name, digest, offset=start)


async def _send(
    ctx: Context,
    request: Request,
    response: Response,
    stream: BlobStream,
    status: int,
    headers: Headers,
    length: int,
) -> None:
    """Send ``length`` bytes of ``stream`` (closing it in any case)."""
    async with stream:
        path = _local_file(ctx, request, stream, length)
        if path is not None:
            await stream.aclose()
            await response.start(status, headers)
            await response.pathsend(path, length)
            return
        chunks = aiter(stream)
        # The first chunk before the status: a source that fails at once (a
        # range of a cold blob whose upstream sent wrong bytes) is a clean
        # error response, not a connection cut after a 206.
        chunk = await anext(chunks, None) if length else None
        await response.start(status, headers)
        remaining = length
        if remaining == 0:
            await response.body(b"")  # an empty blob (or range) still ends its response
        while remaining and chunk is not None:
            if len(chunk) >= remaining:
                await response.body(chunk[:remaining])
                remaining = 0
                break
            remaining -= len(chunk)
            await response.body(chunk, more=True)
            chunk = await anext(chunks, None)
        if remaining:
            # The source ended early without raising: abort rather than
            # end a response shorter than its Content-Length.
            raise RuntimeError(f"blob {stream.digest} ended {remaining} bytes early")


def _local_file(ctx: Context, request: Request, stream: BlobStream, length: int) -> str | None:
    extensions = request.scope.get("extensions") or {}
    if (
        ctx.blob_path is None
        or "http.response.pathsend" not in extensions
        or stream.source != ctx.registry.name
        or stream.offset != 0
        or length != stream.size
    ):
        return None
    return os.fspath(ctx.blob_path(stream.digest))
