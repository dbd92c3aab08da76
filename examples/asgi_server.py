"""A reference embedding: the OCI distribution API as a pure ASGI application.

:func:`create_app` serves any object implementing :class:`dockerconnect.Registry`
(a :class:`~dockerconnect.Resolver` above all) over the registry HTTP API v2
of the OCI distribution-spec, written directly against the ASGI 3.0 spec:

================================================  =====================================
``GET /v2/``                                      API version check
``GET|HEAD /v2/<name>/manifests/<ref>``           pull a manifest (``Accept`` negotiated)
``PUT /v2/<name>/manifests/<ref>``                push a manifest (at most 4 MiB)
``DELETE /v2/<name>/manifests/<ref>``             delete a tag, or a manifest by digest
``GET|HEAD /v2/<name>/blobs/<digest>``            pull a blob (``Range`` honoured)
``POST /v2/<name>/blobs/uploads/``                start an upload; monolithic with
                                                  ``?digest=``; mount with ``?mount=&from=``
``GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>``  status, chunk, finish, cancel
``GET /v2/<name>/tags/list``                      tags, paged with ``n``/``last`` and ``Link``
``GET /v2/_catalog``                              repositories, paged the same way
================================================  =====================================

The referrers endpoint is not served: the ``Registry`` protocol has no
referrers query, and a registry without one answers 404 so that clients fall
back to the tag schema (distribution-spec "Listing Referrers").

Every error the registry raises already knows its OCI code and HTTP status
(``err.code``, ``err.status``, ``err.to_oci()``), so errors become
``{"errors": [...]}`` bodies with no mapping table here; anything else is a
500 ``UNKNOWN`` and is logged.

Memory stays bounded whatever the blob size: blob bodies stream from the
``BlobStream`` in chunks of at most 1 MiB, upload chunks stream to a file in
the upload directory, and the final ``PUT`` streams that file into
``registry.push_blob`` as an async iterable.

With ``admin=True`` three non-standard endpoints are added for operators
(unauthenticated: bind such a server to a trusted interface only):
``GET /_dockerconnect/check/<name>/<ref>`` (the registry's ``check()`` as
JSON), ``GET /_dockerconnect/connectors`` and
``POST /_dockerconnect/connectors/remove?name=N`` (for a registry with a
``connectors`` list, such as a ``Resolver``), and ``GET /_dockerconnect/stats``.

Run it::

    python examples/asgi_server.py --host 127.0.0.1 --port 5000 --store DIR \\
        [--upstream URL ...] [--name NAME] [--eager] [--tag-ttl S] [--admin]

which serves one ``Resolver`` over ``FilesystemManifestStore`` and
``FilesystemBlobStore`` under ``DIR``, with one ``HttpConnector`` per
``--upstream`` in the given order and caching on, with uvicorn.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, urlencode

import anyio
import anyio.to_thread

from dockerconnect import (
    BlobStream,
    CachingPolicy,
    Descriptor,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    IntegrityReport,
    Manifest,
    Registry,
    Resolver,
    validate_repository,
)
from dockerconnect.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    DockerConnectError,
    ManifestInvalid,
    ManifestUnknown,
    NotFound,
    PaginationInvalid,
    RangeInvalid,
    Unsupported,
)

__all__ = ["MAX_MANIFEST_SIZE", "RegistryApp", "create_app", "main"]

log = logging.getLogger("dockerconnect.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: The largest manifest a PUT may carry (distribution-spec "Pushing
#: Manifests": registries SHOULD accept at least 4 MiB; this one accepts that).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: Bytes per file write and per body chunk sent: large enough that a thread
#: hop is cheap, small enough that memory stays bounded.
CHUNK_SIZE = 1024 * 1024
#: Upload sessions untouched for this long are discarded when a new one starts.
UPLOAD_TTL = 24 * 3600.0

_JSON = b"application/json"
_OCTET = b"application/octet-stream"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
_DEFAULT_PLATFORM = ("linux", "amd64")


class MethodNotAllowed(Unsupported):
    """A method the endpoint does not implement (distribution answers 405 ``UNSUPPORTED``)."""

    status = 405


class ManifestTooLarge(ManifestInvalid):
    """A manifest PUT larger than :data:`MAX_MANIFEST_SIZE` (HTTP 413)."""

    status = 413


class RouteUnknown(NotFound):
    """A path that names no endpoint of this server."""


class _ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class _Failed(Exception):
    """A registry error to answer with extra headers (``Range``, ``Content-Range``)."""

    def __init__(self, error: DockerConnectError, headers: Headers) -> None:
        super().__init__(str(error))
        self.error = error
        self.headers = headers


# -- requests and responses ----------------------------------------------------


class _Request:
    """One HTTP request: method, path, query, headers, and its body as a stream."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self._headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        self._receive = receive
        self._body_done = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        key = name.lower().encode("latin-1")
        for k, v in self._headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of every ``name`` header, parameters stripped."""
        key = name.lower().encode("latin-1")
        out: list[str] = []
        for k, v in self._headers:
            if k.lower() == key:
                for item in v.decode("latin-1").split(","):
                    value = item.split(";", 1)[0].strip()
                    if value:
                        out.append(value)
        return out

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        if value is None or not value.strip().isdigit():
            return None
        return int(value)

    async def body(self) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives; ``_ClientGone`` if the client leaves."""
        while not self._body_done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._body_done = True
                raise _ClientGone
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                self._body_done = True
            if chunk:
                yield chunk

    async def read(self, limit: int) -> bytes:
        """The whole body, refused with ``ManifestTooLarge`` past ``limit`` bytes."""
        declared = self.content_length
        if declared is not None and declared > limit:
            raise ManifestTooLarge(f"a manifest may hold at most {limit} bytes, not {declared}")
        parts: list[bytes] = []
        total = 0
        async with aclosing(self.body()) as chunks:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise ManifestTooLarge(f"a manifest may hold at most {limit} bytes")
                parts.append(chunk)
        return b"".join(parts)


class _Response:
    """The sending side of one request; remembers whether the response started."""

    def __init__(self, send: Send, *, head: bool) -> None:
        self._send = send
        self.head = head
        self.started = False

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        # distribution sends the API version on every response; clients probe any of them.
        headers = [*headers, (b"docker-distribution-api-version", b"registry/2.0")]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def pathsend(self, path: str) -> None:
        await self._send({"type": "http.response.pathsend", "path": path})

    async def headers_only(self, status: int, headers: Headers) -> None:
        """The answer to a HEAD: ``headers`` (with the GET's ``Content-Length``), no body."""
        await self.start(status, headers)
        await self.body(b"")

    async def simple(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """A complete response; a HEAD gets the headers (``Content-Length`` kept) only."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.start(status, headers)
        await self.body(b"" if self.head else body)

    async def json(self, status: int, document: Any, headers: Headers | None = None) -> None:
        data = json.dumps(document).encode()
        await self.simple(status, [(b"content-type", _JSON), *(headers or [])], data)

    async def error(self, error: DockerConnectError, headers: Headers | None = None) -> None:
        """The OCI error body for ``error``, with the status the error names."""
        await self.json(error.status, {"errors": [error.to_oci()]}, headers)


def _h(value: object) -> bytes:
    return str(value).encode("latin-1")


def _manifest_headers(descriptor: Descriptor) -> Headers:
    return [
        (b"content-type", _h(descriptor.media_type)),
        (b"docker-content-digest", _h(descriptor.digest)),
        (b"etag", _h(f'"{descriptor.digest}"')),
    ]


def _link(path: str, n: int, last: str) -> Headers:
    """The ``Link`` header to the next page (distribution-spec "Listing Tags")."""
    query = urlencode({"n": n, "last": last})
    return [(b"link", _h(f'<{quote(path)}?{query}>; rel="next"'))]


def _paging(request: _Request) -> tuple[int | None, str | None]:
    raw_n = request.param("n")
    n: int | None = None
    if raw_n is not None:
        if not raw_n.isdigit():
            raise PaginationInvalid(f"n must be a non-negative integer, not {raw_n!r}")
        n = int(raw_n)
    return n, request.param("last")


# -- content negotiation -----------------------------------------------------------


def _acceptable(media_type: str, accept: list[str]) -> bool:
    """Whether a manifest of ``media_type`` may answer a request with these ``Accept`` values.

    No ``Accept`` header, ``*/*`` or ``application/*`` accept anything.
    """
    if not accept:
        return True
    return any(a in (media_type, "*/*", "application/*") for a in accept)


def _default_child(index: Manifest, accept: list[str]) -> Descriptor | None:
    """The child a client that cannot read this index gets: linux/amd64, as
    distribution serves a manifest list to clients that do not accept one."""
    for child in index.manifests:
        platform = child.platform
        if (
            platform is not None
            and (platform.os, platform.architecture) == _DEFAULT_PLATFORM
            and _acceptable(child.media_type, accept)
        ):
            return child
    return None


# -- upload sessions -----------------------------------------------------------------


class _Upload:
    """One blob upload in progress: its bytes so far live in ``path``."""

    def __init__(self, session_id: str, repository: str, path: Path) -> None:
        self.id = session_id
        self.repository = repository
        self.path = path
        self.size = 0
        self.touched = time.monotonic()
        self.lock = anyio.Lock()


class _Uploads:
    """Upload sessions, each a file in ``directory``; bookkeeping in memory.

    A session belongs to the repository it was started in. Sessions are lost
    when the process exits (clients then restart the upload, as the
    distribution-spec requires on 404), and the directory is emptied when
    the application starts and stops.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sessions: dict[str, _Upload] = {}

    def clear(self) -> None:
        """Remove every session and its file (blocking)."""
        self._sessions.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)

    async def new(self, repository: str) -> _Upload:
        await self._expire()
        session_id = secrets.token_hex(16)
        path = self.directory / f"{session_id}.part"
        await anyio.to_thread.run_sync(self._create, path)
        upload = _Upload(session_id, repository, path)
        self._sessions[session_id] = upload
        return upload

    def _create(self, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=False)

    def get(self, repository: str, session_id: str) -> _Upload:
        upload = self._sessions.get(session_id) if _SESSION_ID.match(session_id) else None
        if upload is None or upload.repository != repository:
            raise BlobUploadUnknown(
                f"no upload {session_id!r} in progress for {repository!r}", repository=repository
            )
        upload.touched = time.monotonic()
        return upload

    async def discard(self, upload: _Upload) -> None:
        self._sessions.pop(upload.id, None)
        await anyio.to_thread.run_sync(lambda: upload.path.unlink(missing_ok=True))

    async def _expire(self) -> None:
        cutoff = time.monotonic() - UPLOAD_TTL
        for upload in [u for u in self._sessions.values() if u.touched < cutoff]:
            if not upload.lock.locked():
                await self.discard(upload)

    @staticmethod
    async def append(upload: _Upload, chunks: AsyncIterator[bytes]) -> None:
        """Append a request body to the session's file, in writes of ~1 MiB."""
        async with await anyio.open_file(upload.path, "ab") as file:
            pending: list[bytes] = []
            buffered = 0
            try:
                async for chunk in chunks:
                    pending.append(chunk)
                    buffered += len(chunk)
                    if buffered >= CHUNK_SIZE:
                        await file.write(b"".join(pending))
                        upload.size += buffered
                        pending, buffered = [], 0
                if pending:
                    await file.write(b"".join(pending))
                    upload.size += buffered
            except BaseException:
                # Keep the file exactly as long as the bytes counted, so a
                # client that resumes from the reported Range stays consistent.
                with anyio.CancelScope(shield=True):
                    await file.truncate(upload.size)
                raise

    @staticmethod
    async def read(upload: _Upload) -> AsyncGenerator[bytes, None]:
        """The session's bytes so far, in chunks of at most 1 MiB."""
        async with await anyio.open_file(upload.path, "rb") as file:
            while chunk := await file.read(CHUNK_SIZE):
                yield chunk


async def _chain(*sources: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    for source in sources:
        async with aclosing(source) as chunks:
            async for chunk in chunks:
                yield chunk


# -- routing -----------------------------------------------------------------------


def _split_name(parts: list[str], suffix_length: int) -> str:
    """The repository name from path components, validated (``NameInvalid``)."""
    name = "/".join(parts[:-suffix_length])
    return validate_repository(name)


def _route(path: str) -> tuple[str, str, str | None]:
    """``(endpoint, repository, argument)`` for a ``/v2/...`` path.

    Repository names contain slashes, so the path is read from the right:
    the last components name the endpoint, and everything before them is
    the name.
    """
    rest = path[len("/v2/") :]
    if rest == "":
        return "base", "", None
    if rest == "_catalog":
        return "catalog", "", None
    parts = rest.split("/")
    if len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        return "tags", _split_name(parts, 2), None
    if len(parts) >= 4 and parts[-3:] == ["blobs", "uploads", ""]:
        return "uploads", _split_name(parts, 3), None
    if len(parts) >= 3 and parts[-2:] == ["blobs", "uploads"]:
        return "uploads", _split_name(parts, 2), None
    if len(parts) >= 4 and parts[-3:-1] == ["blobs", "uploads"] and ":" not in parts[-1]:
        return "upload", _split_name(parts, 3), parts[-1]
    if len(parts) >= 3 and parts[-2] == "blobs" and parts[-1]:
        return "blob", _split_name(parts, 2), parts[-1]
    if len(parts) >= 3 and parts[-2] == "manifests" and parts[-1]:
        return "manifest", _split_name(parts, 2), parts[-1]
    raise RouteUnknown(f"no endpoint at {path}")


def _not_allowed(request: _Request, allowed: Iterable[str]) -> NoReturn:
    raise MethodNotAllowed(f"{request.method} is not allowed here; use {', '.join(allowed)}")


# -- the application ---------------------------------------------------------------


class RegistryApp:
    """The ASGI application :func:`create_app` returns; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        *,
        upload_dir: str | os.PathLike[str] | None = None,
        blob_path: Callable[[Digest], str | os.PathLike[str]] | None = None,
        admin: bool = False,
        open_registry: bool = True,
        resources: Sequence[AbstractAsyncContextManager[Any]] = (),
    ) -> None:
        self.registry = registry
        self.resources = tuple(resources)
        self.admin = admin
        self.open_registry = open_registry
        self._blob_path = blob_path
        self._own_upload_dir = upload_dir is None
        directory = Path(upload_dir or tempfile.mkdtemp(prefix="dockerconnect-uploads-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.uploads = _Uploads(directory)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise RuntimeError(f"this application serves HTTP only, not {scope['type']!r}")

    # -- lifespan ------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Open the resources, then the registry (when it is an async context
        manager), for the server's lifetime; close them in reverse order at
        shutdown. Start and end with an empty upload directory."""
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with AsyncExitStack() as stack:
            try:
                await anyio.to_thread.run_sync(self.uploads.clear)
                for resource in self.resources:
                    await stack.enter_async_context(resource)
                if self.open_registry and hasattr(self.registry, "__aenter__"):
                    await stack.enter_async_context(self.registry)  # type: ignore[arg-type]
            except Exception as exc:
                log.exception("startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
        await anyio.to_thread.run_sync(self.close)
        await send({"type": "lifespan.shutdown.complete"})

    def close(self) -> None:
        """Drop every upload session; remove the upload directory if it was ours."""
        self.uploads.clear()
        if self._own_upload_dir:
            shutil.rmtree(self.uploads.directory, ignore_errors=True)

    # -- dispatch ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(scope, receive)
        response = _Response(send, head=request.method == "HEAD")
        try:
            await self._dispatch(request, response)
        except _ClientGone:
            log.info("client went away during %s %s", request.method, request.path)
        except _Failed as failed:
            await self._answer_error(request, response, failed.error, failed.headers)
        except DockerConnectError as error:
            await self._answer_error(request, response, error, [])
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            if response.started:
                # The status is gone; raising makes the server drop the
                # connection, so the client cannot mistake a short body for a
                # whole one.
                raise
            await response.error(DockerConnectError("internal server error"))

    async def _answer_error(
        self, request: _Request, response: _Response, error: DockerConnectError, headers: Headers
    ) -> None:
        if response.started:
            # The headers promised a body we can no longer produce (an
            # upstream transfer broke mid-blob): abort the connection.
            log.warning("%s %s failed mid-response: %s", request.method, request.path, error)
            raise error
        if error.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, error)
        await response.error(error, headers)

    async def _dispatch(self, request: _Request, response: _Response) -> None:
        path = request.path
        if path == "/v2" or path.startswith("/v2/"):
            endpoint, name, arg = _route(path if path != "/v2" else "/v2/")
            if endpoint == "base":
                await self._base(request, response)
            elif endpoint == "catalog":
                await self._catalog(request, response)
            elif endpoint == "tags":
                await self._tags(request, response, name)
            elif endpoint == "manifest":
                assert arg is not None
                await self._manifest(request, response, name, arg)
            elif endpoint == "blob":
                assert arg is not None
                await self._blob(request, response, name, arg)
            elif endpoint == "uploads":
                await self._start_upload(request, response, name)
            else:
                assert endpoint == "upload"
                assert arg is not None
                await self._upload(request, response, name, arg)
        elif self.admin and path.startswith("/_dockerconnect/"):
            await self._admin(request, response, path[len("/_dockerconnect/") :])
        else:
            raise RouteUnknown(f"no endpoint at {path}")

    # -- base, listing ---------------------------------------------------------------

    async def _base(self, request: _Request, response: _Response) -> None:
        if request.method not in ("GET", "HEAD"):
            _not_allowed(request, ["GET", "HEAD"])
        await response.json(200, {})

    async def _catalog(self, request: _Request, response: _Response) -> None:
        if request.method not in ("GET", "HEAD"):
            _not_allowed(request, ["GET", "HEAD"])
        n, last = _paging(request)
        repositories = await self.registry.repositories(n=n, last=last)
        headers = _link("/v2/_catalog", n, repositories[-1]) if n and len(repositories) == n else []
        await response.json(200, {"repositories": repositories}, headers)

    async def _tags(self, request: _Request, response: _Response, name: str) -> None:
        if request.method not in ("GET", "HEAD"):
            _not_allowed(request, ["GET", "HEAD"])
        n, last = _paging(request)
        tags = await self.registry.tags(name, n=n, last=last)
        headers = _link(f"/v2/{name}/tags/list", n, tags[-1]) if n and len(tags) == n else []
        await response.json(200, {"name": name, "tags": tags}, headers)

    # -- manifests ---------------------------------------------------------------------

    async def _manifest(self, request: _Request, response: _Response, name: str, ref: str) -> None:
        if request.method in ("GET", "HEAD"):
            await self._get_manifest(request, response, name, ref)
        elif request.method == "PUT":
            await self._put_manifest(request, response, name, ref)
        elif request.method == "DELETE":
            await self.registry.delete_manifest(name, ref)
            await response.simple(202, [])
        else:
            _not_allowed(request, ["GET", "HEAD", "PUT", "DELETE"])

    async def _get_manifest(
        self, request: _Request, response: _Response, name: str, ref: str
    ) -> None:
        """A manifest in a media type the client accepts (distribution-spec
        "Pulling manifests"); an index a client cannot read is answered with
        its linux/amd64 child, as distribution does, or ``MANIFEST_UNKNOWN``."""
        accept = request.header_values("accept")
        if response.head:
            descriptor = await self.registry.head_manifest(name, ref)
            if _acceptable(descriptor.media_type, accept):
                headers = _manifest_headers(descriptor)
                length = (b"content-length", _h(descriptor.size))
                await response.headers_only(200, [*headers, length])
                return
        manifest = await self.registry.get_manifest(name, ref, accept=accept or None)
        if not _acceptable(manifest.media_type, accept):
            child = _default_child(manifest, accept) if manifest.is_index else None
            if child is None:
                raise ManifestUnknown(
                    f"manifest {name}:{ref} is a {manifest.media_type}, which the request's "
                    "Accept header does not allow",
                    repository=name,
                )
            manifest = await self.registry.get_manifest(
                name, str(child.digest), accept=accept or None
            )
        headers = _manifest_headers(manifest.descriptor())
        if response.head:
            length = (b"content-length", _h(len(manifest.data)))
            await response.headers_only(200, [*headers, length])
        else:
            await response.simple(200, headers, manifest.data)

    async def _put_manifest(
        self, request: _Request, response: _Response, name: str, ref: str
    ) -> None:
        """Store a manifest under a tag or its digest; 201 with its ``Location``."""
        data = await request.read(MAX_MANIFEST_SIZE)
        content_type = request.header_values("content-type")
        media_type = content_type[0] if content_type else Manifest.parse(data).media_type
        tag: str | None = ref
        if ":" in ref:
            tag = None
            if not Digest.parse(ref).matches(data):
                raise DigestInvalid(
                    f"the manifest's bytes do not match the digest {ref} it was pushed under",
                    repository=name,
                    digest=ref,
                )
        descriptor = await self.registry.push_manifest(name, data, media_type=media_type, tag=tag)
        await response.simple(
            201,
            [
                (b"location", _h(f"/v2/{name}/manifests/{descriptor.digest}")),
                (b"docker-content-digest", _h(descriptor.digest)),
            ],
        )

    # -- blobs -------------------------------------------------------------------------

    async def _blob(self, request: _Request, response: _Response, name: str, digest: str) -> None:
        if request.method == "HEAD":
            descriptor = await self.registry.stat_blob(name, digest)
            await response.headers_only(200, _blob_headers(descriptor.digest, descriptor.size))
        elif request.method == "GET":
            await self._get_blob(request, response, name, digest)
        elif request.method == "DELETE":
            raise MethodNotAllowed("deleting blobs is not supported: the Registry has no such call")
        else:
            _not_allowed(request, ["GET", "HEAD"])

    async def _get_blob(
        self, request: _Request, response: _Response, name: str, digest: str
    ) -> None:
        """Stream a blob, or the one byte range asked for (RFC 9110 "Range").

        A ``Range`` the server cannot parse, or one with several ranges, is
        ignored and the whole blob served, as RFC 9110 allows.
        """
        wanted = _parse_range(request.header("range"))
        if wanted is None:
            stream = await self.registry.open_blob(name, digest)
            headers = _blob_headers(stream.digest, stream.size)
            await self._send_blob(request, response, stream, 200, headers, stream.size)
            return
        descriptor = await self.registry.stat_blob(name, digest)
        size = descriptor.size
        start, end = _resolve_range(wanted, size, descriptor.digest)
        stream = await self.registry.open_blob(name, digest, offset=start)
        headers = [
            *_blob_headers(stream.digest, end - start + 1),
            (b"content-range", _h(f"bytes {start}-{end}/{size}")),
        ]
        await self._send_blob(request, response, stream, 206, headers, end - start + 1)

    async def _send_blob(
        self,
        request: _Request,
        response: _Response,
        stream: BlobStream,
        status: int,
        headers: Headers,
        length: int,
    ) -> None:
        """Send ``length`` bytes of ``stream`` (closing it in any case).

        When the server offers the ``http.response.pathsend`` extension and
        the bytes come whole from this registry's own blob files, the server
        sends the file itself (zero-copy where it can).
        """
        async with stream:
            path = self._local_file(request, stream, length)
            if path is not None:
                await stream.aclose()
                await response.start(status, headers)
                await response.pathsend(path)
                return
            await response.start(status, headers)
            remaining = length
            async for chunk in stream:
                if len(chunk) >= remaining:
                    await response.body(chunk[:remaining])
                    remaining = 0
                    break
                remaining -= len(chunk)
                await response.body(chunk, more=True)
            if remaining:
                # The source ended early without raising: abort rather than
                # end a response shorter than its Content-Length.
                raise RuntimeError(f"blob {stream.digest} ended {remaining} bytes early")

    def _local_file(self, request: _Request, stream: BlobStream, length: int) -> str | None:
        extensions = request.scope.get("extensions") or {}
        if (
            self._blob_path is None
            or "http.response.pathsend" not in extensions
            or stream.source != self.registry.name
            or stream.offset != 0
            or length != stream.size
        ):
            return None
        return os.fspath(self._blob_path(stream.digest))

    # -- uploads -----------------------------------------------------------------------

    async def _start_upload(self, request: _Request, response: _Response, name: str) -> None:
        """``POST /v2/<name>/blobs/uploads/``: start, monolithic, or mount."""
        if request.method != "POST":
            _not_allowed(request, ["POST"])
        mount = request.param("mount")
        if mount is not None:
            mounted = await self._mount(name, mount, request.param("from"))
            if mounted is not None:
                await self._created_blob(response, name, mounted)
                return
        digest = request.param("digest")
        if digest is not None:
            d = Digest.parse(digest)
            async with aclosing(request.body()) as body:
                descriptor = await self.registry.push_blob(name, body, digest=d)
            await self._created_blob(response, name, descriptor.digest)
            return
        upload = await self.uploads.new(name)
        await self._upload_status(response, 202, name, upload)

    async def _mount(self, name: str, digest: str, source: str | None) -> Digest | None:
        """Make ``digest`` resolve for ``name``; None to fall back to an upload.

        Blobs are content-addressed across the registry, so a blob that
        already resolves for ``name`` needs nothing. One that resolves only
        through ``source`` (say, behind a connector that scopes blobs by
        repository) is copied here, streaming, so that a manifest pushed to
        ``name`` finds it.
        """
        d = Digest.parse(digest)
        try:
            found = await self.registry.stat_blob(name, d)
            return found.digest
        except NotFound:
            pass
        if source is None:
            return None
        validate_repository(source)
        try:
            stream = await self.registry.open_blob(source, d)
        except NotFound:
            return None
        async with stream:
            descriptor = await self.registry.push_blob(name, stream, digest=d)
        return descriptor.digest

    async def _upload(
        self, request: _Request, response: _Response, name: str, session_id: str
    ) -> None:
        upload = self.uploads.get(name, session_id)
        if request.method == "GET":
            await self._upload_status(response, 204, name, upload)
        elif request.method == "PATCH":
            async with upload.lock:
                self.uploads.get(name, upload.id)  # still open once the lock is ours?
                self._check_chunk(request, name, upload)
                async with aclosing(request.body()) as body:
                    await self.uploads.append(upload, body)
            await self._upload_status(response, 202, name, upload)
        elif request.method == "PUT":
            await self._finish_upload(request, response, name, upload)
        elif request.method == "DELETE":
            async with upload.lock:
                await self.uploads.discard(upload)
            await response.simple(204, [])
        else:
            _not_allowed(request, ["GET", "PATCH", "PUT", "DELETE"])

    def _check_chunk(self, request: _Request, name: str, upload: _Upload) -> None:
        """Chunks arrive in order (distribution-spec "Pushing a blob in chunks"):
        a ``Content-Range`` that does not start where the upload ends is 416."""
        value = request.header("content-range")
        if value is None:
            return  # a streamed PATCH: the body is appended as it comes
        match = _CONTENT_RANGE.match(value.strip())
        start = int(match.group(1)) if match else -1
        end = int(match.group(2)) if match else -1
        length = request.content_length
        if (
            match is None
            or start != upload.size
            or end < start
            or (length is not None and length != end - start + 1)
        ):
            raise _Failed(
                RangeInvalid(
                    f"chunk {value!r} does not continue the upload at byte {upload.size}",
                    repository=name,
                ),
                _upload_headers(name, upload),
            )

    async def _finish_upload(
        self, request: _Request, response: _Response, name: str, upload: _Upload
    ) -> None:
        """``PUT ...?digest=``: the bytes so far plus this body, streamed into
        ``push_blob``, which verifies them. Once the bytes are offered the
        session ends, whether they are accepted or not."""
        digest = request.param("digest")
        if digest is None:
            raise DigestInvalid("completing an upload needs ?digest=", repository=name)
        d = Digest.parse(digest)
        async with upload.lock:
            self.uploads.get(name, upload.id)  # still open once the lock is ours?
            if request.header("content-range") is not None:
                self._check_chunk(request, name, upload)  # a 416 keeps the session
            try:
                data = _chain(self.uploads.read(upload), request.body())
                async with aclosing(data):
                    descriptor = await self.registry.push_blob(name, data, digest=d)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.uploads.discard(upload)
        await self._created_blob(response, name, descriptor.digest)

    async def _upload_status(
        self, response: _Response, status: int, name: str, upload: _Upload
    ) -> None:
        await response.simple(status, _upload_headers(name, upload))

    async def _created_blob(self, response: _Response, name: str, digest: Digest) -> None:
        await response.simple(
            201,
            [
                (b"location", _h(f"/v2/{name}/blobs/{digest}")),
                (b"docker-content-digest", _h(digest)),
            ],
        )

    # -- administration (non-standard) -------------------------------------------------

    async def _admin(self, request: _Request, response: _Response, rest: str) -> None:
        if rest.startswith("check/") and request.method == "GET":
            parts = rest[len("check/") :].split("/")
            if len(parts) < 2 or not parts[-1]:
                raise RouteUnknown("use /_dockerconnect/check/<name>/<reference>")
            name = _split_name(parts, 1)
            report = await self.registry.check(name, parts[-1])
            await response.json(200, _report_json(report))
        elif rest == "connectors" and request.method == "GET":
            await response.json(200, {"connectors": self._connector_names()})
        elif rest == "connectors/remove" and request.method == "POST":
            await self._remove_connector(request, response)
        elif rest == "stats" and request.method == "GET":
            stats = getattr(self.registry, "stats", None)
            if stats is None or not hasattr(stats, "as_dict"):
                raise Unsupported("this registry keeps no stats")
            await response.json(200, stats.as_dict())
        else:
            raise RouteUnknown(
                f"no administrative endpoint {request.method} /_dockerconnect/{rest}"
            )

    def _connectors(self) -> list[Any]:
        connectors = getattr(self.registry, "connectors", None)
        if not isinstance(connectors, list):
            raise Unsupported("this registry has no list of connectors")
        return connectors

    def _connector_names(self) -> list[str]:
        return [c.name for c in self._connectors()]

    async def _remove_connector(self, request: _Request, response: _Response) -> None:
        """Remove a connector by name; the registry's next request no longer asks it."""
        name = request.param("name")
        connectors = self._connectors()
        for index, connector in enumerate(connectors):
            if connector.name == name:
                del connectors[index]
                log.warning("connector %r removed by an administrator", name)
                await response.json(200, {"removed": name, "connectors": self._connector_names()})
                return
        raise NotFound(f"no connector named {name!r}")


def _blob_headers(digest: Digest, length: int) -> Headers:
    return [
        (b"content-type", _OCTET),
        (b"content-length", _h(length)),
        (b"docker-content-digest", _h(digest)),
        (b"accept-ranges", b"bytes"),
        (b"etag", _h(f'"{digest}"')),
    ]


def _upload_headers(name: str, upload: _Upload) -> Headers:
    # distribution's convention: an empty upload reports "0-0", not "0--1".
    end = max(upload.size - 1, 0)
    return [
        (b"location", _h(f"/v2/{name}/blobs/uploads/{upload.id}")),
        (b"range", _h(f"0-{end}")),
        (b"docker-upload-uuid", _h(upload.id)),
        (b"blob-upload-session-id", _h(upload.id)),
    ]


def _parse_range(value: str | None) -> tuple[int | None, int | None] | None:
    """``(first, last)`` from ``bytes=first-last`` (either may be absent); None to ignore."""
    if value is None:
        return None
    match = _RANGE.match(value.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first = int(match.group(1)) if match.group(1) else None
    last = int(match.group(2)) if match.group(2) else None
    if first is not None and last is not None and last < first:
        return None
    return first, last


def _resolve_range(
    wanted: tuple[int | None, int | None], size: int, digest: Digest
) -> tuple[int, int]:
    """The inclusive byte range to send; 416 when none of it lies in the blob."""
    first, last = wanted
    if first is None:
        # A suffix range: the last ``last`` bytes.
        assert last is not None
        if last == 0 or size == 0:
            raise _unsatisfiable(size, digest)
        return max(size - last, 0), size - 1
    if first >= size:
        raise _unsatisfiable(size, digest)
    return first, size - 1 if last is None else min(last, size - 1)


def _unsatisfiable(size: int, digest: Digest) -> _Failed:
    error = RangeInvalid(f"the range lies outside the blob's {size} bytes", digest=digest)
    return _Failed(error, [(b"content-range", _h(f"bytes */{size}"))])


def _report_json(report: IntegrityReport) -> dict[str, Any]:
    def descriptor(d: Descriptor) -> dict[str, Any]:
        return {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}

    return {
        "repository": report.repository,
        "manifest": descriptor(report.manifest),
        "ok": report.ok,
        "entries": [{**descriptor(e.descriptor), "location": e.location} for e in report.entries],
        "missing": [str(d.digest) for d in report.missing],
    }


def create_app(
    registry: Registry,
    *,
    upload_dir: str | os.PathLike[str] | None = None,
    blob_path: Callable[[Digest], str | os.PathLike[str]] | None = None,
    admin: bool = False,
    open_registry: bool = True,
    resources: Sequence[AbstractAsyncContextManager[Any]] = (),
) -> RegistryApp:
    """An ASGI 3.0 application serving ``registry`` over the distribution API.

    - ``upload_dir``: where upload sessions keep their bytes (a new temporary
      directory, removed at shutdown, by default). Emptied at startup.
    - ``blob_path``: where this registry's own blob of a digest lives on
      disk; with it, servers offering ``http.response.pathsend`` send those
      files themselves.
    - ``admin``: add the non-standard ``/_dockerconnect/`` endpoints.
    - ``open_registry``: when the registry is an async context manager (a
      ``Resolver``), the ASGI lifespan opens it at startup and closes it at
      shutdown. Without a lifespan (as under ``httpx.ASGITransport``), open
      it yourself.
    - ``resources``: more async context managers the lifespan opens before
      the registry and closes after it (such as connectors' HTTP clients).
    """
    return RegistryApp(
        registry,
        upload_dir=upload_dir,
        blob_path=blob_path,
        admin=admin,
        open_registry=open_registry,
        resources=resources,
    )


# -- command line ------------------------------------------------------------------


def build_resolver(
    store: Path,
    upstreams: Iterable[str],
    *,
    name: str = "local",
    eager: bool = False,
    tag_ttl: float = 300.0,
) -> Resolver:
    """One ``Resolver`` over filesystem stores under ``store``, with one
    ``HttpConnector`` per upstream URL, in order, and caching on."""
    from dockerconnect.http import HttpConnector

    spool = store / "spool"
    # Shared fetches spool to disk next to the store rather than to the
    # system temporary directory, which may be a RAM-backed tmpfs.
    spool.mkdir(parents=True, exist_ok=True)
    return Resolver(
        name,
        manifests=FilesystemManifestStore(store),
        blobs=FilesystemBlobStore(store, name=name),
        # The Resolver verifies every blob before its last byte reaches a
        # client (the store's writer checks it on commit), so the connectors
        # need not hash blobs a second time.
        connectors=[HttpConnector(url, verify_blobs=False) for url in upstreams],
        policy=CachingPolicy(cache_manifests=True, cache_blobs=True, eager=eager, tag_ttl=tag_ttl),
        spool_dir=str(spool),
    )


def main(argv: list[str] | None = None) -> None:
    """Serve a ``Resolver`` over ``--store`` with uvicorn (see the module docstring)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--store", required=True, type=Path, help="directory for the stores")
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="URL", help="a registry to connect"
    )
    parser.add_argument("--name", default="local", help="this registry's name")
    parser.add_argument("--eager", action="store_true", help="cache whole images eagerly")
    parser.add_argument("--tag-ttl", type=float, default=300.0, metavar="S")
    parser.add_argument(
        "--admin", action="store_true", help="serve the /_dockerconnect/ endpoints (no auth!)"
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    store: Path = args.store.resolve()
    resolver = build_resolver(
        store, args.upstream, name=args.name, eager=args.eager, tag_ttl=args.tag_ttl
    )
    blobs = resolver.blobs
    assert isinstance(blobs, FilesystemBlobStore)
    app = create_app(
        resolver,
        upload_dir=store / "uploads",
        blob_path=blobs.blob_path,
        admin=args.admin,
        # Each HttpConnector owns an httpx client; close it at shutdown even
        # if an administrator removed the connector meanwhile.
        resources=[c for c in resolver.connectors if isinstance(c, AbstractAsyncContextManager)],
    )
    # "auto" picks uvloop and httptools when they are installed.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="auto",
        http="auto",
        lifespan="on",
        log_level=args.log_level,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
