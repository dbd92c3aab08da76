"""``POST /v2/<name>/blobs/uploads/`` and ``GET|PATCH|PUT|DELETE .../uploads/<id>``.

A ``POST`` starts a session, uploads monolithically with ``?digest=``, or
mounts with ``?mount=&from=``. Chunks arrive in order (distribution-spec
"Pushing a blob in chunks"); a ``Content-Range`` that does not start where
the upload ends is 416 with the current ``Range``. The final ``PUT``
streams the session's bytes plus its own body into ``registry.push_blob``,
which verifies them; once offered, the session ends whether they are
accepted or not.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio

from dockerconnect import Digest, validate_repository
from dockerconnect.asgi._blobs import bounded_int
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._errors import Failed
from dockerconnect.asgi._http import Headers, Request, Response, h
from dockerconnect.asgi._routing import not_allowed
from dockerconnect.asgi._uploads import Upload
from dockerconnect.errors import DigestInvalid, NotFound, RangeInvalid

__all__ = ["start_upload", "upload"]

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")


def _upload_headers(name: str, session: Upload) -> Headers:
    # distribution's convention: an empty upload reports "0-0", not "0--1".
    end = max(session.size - 1, 0)
    return [
        (b"location", h(f"/v2/{name}/blobs/uploads/{session.id}")),
        (b"range", h(f"0-{end}")),
        (b"docker-upload-uuid", h(session.id)),
        (b"blob-upload-session-id", h(session.id)),
    ]


async def _created(response: Response, name: str, digest: Digest) -> None:
    await response.simple(
        201,
        [
            (b"location", h(f"/v2/{name}/blobs/{digest}")),
            (b"docker-content-digest", h(digest)),
        ],
    )


async def start_upload(ctx: Context, request: Request, response: Response, name: str) -> None:
    if request.method != "POST":
        not_allowed(request.method, ["POST"])
    mount = request.param("mount")
    if mount is not None:
        mounted = await _mount(ctx, name, mount, request.param("from"))
        if mounted is not None:
            await _created(response, name, mounted)
            return
    digest = request.param("digest")
    if digest is not None:
        d = Digest.parse(digest)
        async with aclosing(request.body()) as body:
            await ctx.registry.push_blob(name, body, digest=d)
        await _created(response, name, d)
        return
    session = await ctx.uploads.new(name)
    await response.simple(202, _upload_headers(name, session))


async def _mount(ctx: Context, name: str, digest: str, source: str | None) -> Digest | None:
    """Make ``digest`` resolve for ``name``; None to fall back to an upload.

    Blobs are content-addressed across the registry, so a blob that already
    resolves for ``name`` needs nothing. One that resolves only through
    ``source`` is copied here, streaming, so that a manifest pushed to
    ``name`` finds it.
    """
    d = Digest.parse(digest)
    try:
        await ctx.registry.stat_blob(name, d)
        return d
    except NotFound:
        pass
    if source is None:
        return None
    validate_repository(source)
    try:
        stream = await ctx.registry.open_blob(source, d)
    except NotFound:
        return None
    async with stream:
        await ctx.registry.push_blob(name, stream, digest=d)
    return d


async def upload(
    ctx: Context, request: Request, response: Response, name: str, session_id: str
) -> None:
    session = await ctx.uploads.get(name, session_id)
    if request.method == "GET":
        await response.simple(204, _upload_headers(name, session))
    elif request.method == "PATCH":
        async with ctx.uploads.locked(session):
            _check_chunk(request, name, session)
            async with aclosing(request.body()) as body:
                await ctx.uploads.append(session, body)
        await response.simple(202, _upload_headers(name, session))
    elif request.method == "PUT":
        await _finish(ctx, request, response, name, session)
    elif request.method == "DELETE":
        async with ctx.uploads.locked(session):
            await ctx.uploads.discard(session)
        await response.simple(204, [])
    else:
        not_allowed(request.method, ["GET", "PATCH", "PUT", "DELETE"])


def _check_chunk(request: Request, name: str, session: Upload) -> None:
    value = request.header("content-range")
    if value is None:
        return  # a streamed PATCH: the body is appended as it comes
    match = _CONTENT_RANGE.fullmatch(value.strip())
    start = bounded_int(match.group(1)) if match else -1
    end = bounded_int(match.group(2)) if match else -1
    length = request.content_length
    if (
        match is None
        or start != session.size
        or end < start
        or (length is not None and length != end - start + 1)
    ):
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise Failed(
            RangeInvalid(
                f"chunk {shown!r} does not continue the upload at byte {session.size}",
                repository=name,
            ),
            _upload_headers(name, session),
        )


async def _finish(
    ctx: Context, request: Request, response: Response, name: str, session: Upload
) -> None:
    digest = request.param("digest")
    if digest is None:
        raise DigestInvalid("completing an upload needs ?digest=", repository=name)
    d = Digest.parse(digest)
    async with ctx.uploads.locked(session):
        if request.header("content-range") is not None:
            _check_chunk(request, name, session)  # a 416 keeps the session
        try:
            data = _chain(ctx.uploads.read(session), request.body())
            async with aclosing(data):
                await ctx.registry.push_blob(name, data, digest=d)
        finally:
            with anyio.CancelScope(shield=True):
                await ctx.uploads.discard(session)
    await _created(response, name, d)


async def _chain(*sources: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    for source in sources:
        async with aclosing(source) as chunks:
            async for chunk in chunks:
                yield chunk
