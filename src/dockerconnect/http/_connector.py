"""``HttpConnector``: the registry HTTP API v2 (OCI distribution-spec) over httpx."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, NoReturn

import anyio
import httpx

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import THREAD_HASH_THRESHOLD, Digest, DigestVerifier
from dockerconnect._manifest import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    Manifest,
    base_media_type,
)
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import (
    Denied,
    DigestInvalid,
    DigestMismatch,
    DockerConnectError,
    InvalidInput,
    ManifestInvalid,
    RangeInvalid,
    SizeInvalid,
    TooManyRequests,
    Unauthorized,
    UpstreamError,
)
from dockerconnect.http._auth import Challenge, Credentials, TokenCache, parse_challenges
from dockerconnect.http._retry import RETRY_STATUSES, RateLimit, Retry, parse_retry_after

__all__ = ["DOCKER_HUB_URL", "HttpConnector"]

logger = logging.getLogger("dockerconnect.http")

#: Where Docker Hub's registry API lives; ``docker.io`` is only its name.
DOCKER_HUB_URL = "https://registry-1.docker.io"
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: Connect quickly or fail over; reads may legitimately be slow on big blobs.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_RETRY = Retry()
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
#: Enough for any OCI error body; more is not read.
_MAX_ERROR_BODY = 64 * 1024
#: A listing longer than this many pages is treated as a loop.
_MAX_PAGES = 10_000
_PAGE_SIZE = 1000
_ABSENT_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "dockerconnect/0.1 (+httpx)"
_HTTPX_ERRORS = (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL)
_RETRYABLE_HTTPX = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _loggable(url: httpx.URL) -> str:
    # Redirect targets are often pre-signed object-storage URLs whose query
    # string is itself a credential: never log it.
    return str(url.copy_with(query=None, fragment=None))


class HttpConnector:
    """A :class:`~dockerconnect.Connector` that speaks the registry HTTP API v2.

    ``url`` is the registry's base URL (``https://ghcr.io``,
    ``http://127.0.0.1:5000``); ``docker.io`` / ``index.docker.io`` mean
    Docker Hub's API at ``https://registry-1.docker.io``, and a URL without a
    scheme means ``https``. User info in the URL is taken as credentials.
    ``name`` defaults to ``docker.io`` for Docker Hub, else the URL's
    ``host[:port]``.

    Routing (checked by :meth:`serves`, before any I/O): ``include`` and
    ``exclude`` are shell globs (:func:`fnmatch.fnmatchcase`; ``*`` also
    matches ``/``) over the repository name as the client sends it; an empty
    ``include`` includes everything. With ``prefix="hub"`` only ``hub/…``
    names are served, asked upstream without the prefix (``hub/nginx`` →
    ``nginx``). With ``library=True`` (the default for Docker Hub) a
    single-component name gets Docker Hub's ``library/`` namespace.

    Auth: anonymous, basic (``credentials``) and bearer tokens through the
    ``WWW-Authenticate`` challenge, cached per scope until they expire. An
    ``Authorization`` header goes only to the registry's own origin, never to
    a host a redirect leads to; credentials go to a token realm only when it
    is ``https`` or on the registry's own host. Neither credentials nor
    tokens are ever logged.

    Absent is ``None``: a ``404`` or an OCI ``MANIFEST_UNKNOWN`` /
    ``BLOB_UNKNOWN`` / ``NAME_UNKNOWN`` body. Could-not-ask is an
    :class:`~dockerconnect.errors.UpstreamError` naming this connector:
    ``Unauthorized`` (401), ``Denied`` (403), ``TooManyRequests`` (429, with
    ``retry_after``), or ``UpstreamError`` for network failures, server errors
    and malformed answers (the ``httpx`` exception, if any, is the
    ``__cause__``). Bytes that do not match their digest raise
    :class:`~dockerconnect.errors.DigestMismatch` naming this connector.
    Invalid names, tags and digests raise ``InvalidInput`` before any I/O.

    ``client`` (an ``httpx.AsyncClient`` the caller owns and closes) or
    ``transport`` may be injected; otherwise the connector makes its own
    client, closed by :meth:`aclose` or ``async with``. ``clock`` (monotonic
    seconds) and ``sleep`` are injectable so token expiry and backoff can be
    tested without waiting.

    ``verify_blobs=False`` makes blob streams check only their length, not
    their digest: for a consumer that verifies every byte itself, as a
    :class:`~dockerconnect.Resolver` does (its cache writer, or its own
    verifier, checks each blob before the blob's last byte reaches a
    reader), it saves hashing every blob twice. Manifests are always verified.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        credentials: Credentials | tuple[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        prefix: str | None = None,
        library: bool | None = None,
        retry: Retry = DEFAULT_RETRY,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_resumes: int = 3,
        verify_blobs: bool = True,
        verify: ssl.SSLContext | str | bool = True,
        user_agent: str = _USER_AGENT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if client is not None and transport is not None:
            raise InvalidInput("pass either client or transport, not both")
        base = url.strip()
        if "://" not in base:
            base = "https://" + base
        parsed = httpx.URL(base)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidInput(f"not an http(s) registry URL: {url!r}")
        creds = Credentials.coerce(credentials)
        if parsed.userinfo:
            if creds is None:
                creds = Credentials(parsed.username, parsed.password)
            parsed = parsed.copy_with(username=None, password=None)
        hub = parsed.host in _DOCKER_HUB_HOSTS
        if hub:
            parsed = httpx.URL(DOCKER_HUB_URL)
        self._base = str(parsed.copy_with(query=None, fragment=None)).rstrip("/")
        self._origin = _origin(httpx.URL(self._base))
        if name is None:
            name = "docker.io" if hub else parsed.netloc.decode("ascii")
        #: The name this connector reports in errors and as ``BlobStream.source``.
        self.name: str = name
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        if prefix is not None:
            prefix = prefix.strip("/")
            validate_repository(prefix)
        self.prefix = prefix
        self.library = hub if library is None else library
        self.retry = retry
        if max_resumes < 0:
            raise InvalidInput("max_resumes must not be negative")
        self.max_resumes = max_resumes
        #: Whether blob streams hash what they deliver (see the class docs).
        self.verify_blobs = verify_blobs
        #: The rate limit the upstream last announced, or ``None`` if it never
        #: did (read it to export metrics or to back off early).
        self.rate_limit: RateLimit | None = None
        self._credentials = creds
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._user_agent = user_agent
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self._tokens = TokenCache(clock)
        self._token_locks: dict[str, anyio.Lock] = {}
        # What the registry asked for the last time it challenged us: once we
        # know, new scopes get their token before the first request, saving a
        # round trip per repository.
        self._bearer: Challenge | None = None
        self._basic = False
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport, timeout=self._timeout, verify=verify, follow_redirects=False
        )

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        """Release the hashing threads, and close the HTTP client if this
        connector made it (an injected one is left open)."""
        pool, self._hasher = self._hasher, None
        if pool is not None:
            pool.shutdown(wait=False)
        if self._owns_client:
            await self._client.aclose()

    def _hash_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        # Per instance (no hidden shared state); two threads serve the 2-core
        # machines this is tuned for, each download keeping at most one job queued.
        if self._hasher is None:
            self._hasher = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"dockerconnect-hash-{self.name}"
            )
        return self._hasher

    async def __aenter__(self) -> HttpConnector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"HttpConnector({self._base!r}, name={self.name!r})"

    @property
    def url(self) -> str:
        """The registry's base URL (without credentials)."""
        return self._base

    # -- routing -------------------------------------------------------------

    def serves(self, repository: str) -> bool:
        """Whether ``repository`` (as the client names it) is asked of this upstream."""
        if self.prefix is not None and not repository.startswith(self.prefix + "/"):
            return False
        if self.include and not any(fnmatch.fnmatchcase(repository, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(repository, p) for p in self.exclude)

    def upstream_name(self, repository: str) -> str | None:
        """The name the upstream knows ``repository`` by, or ``None`` if not served."""
        if not self.serves(repository):
            return None
        name = repository
        if self.prefix is not None:
            name = name[len(self.prefix) + 1 :]
        if self.library and "/" not in name:
            name = "library/" + name
        return name

    def client_name(self, upstream: str) -> str | None:
        """The inverse of :meth:`upstream_name`, or ``None`` if not served."""
        name = upstream
        if self.prefix is not None:
            name = f"{self.prefix}/{name}"
        return name if self.serves(name) else None

    # -- the Connector protocol ----------------------------------------------

    async def ping(self) -> float:
        """A cheap health probe: ``GET /v2/`` once, without retries or auth.

        Returns the round-trip time in seconds. A ``200`` or ``401`` answer
        counts as healthy (distribution-spec: ``/v2/`` "MUST" answer one of
        them, and ``401`` only means credentials are needed), so this checks
        reachability, not credentials. Raises ``UpstreamError`` otherwise.
        """
        started = self._clock()
        with self._translating():
            response = await self._exchange("GET", f"{self._base}/v2/", {}, None)
            await response.aclose()
        if response.status_code not in (200, 401):
            raise UpstreamError(
                f"health probe GET /v2/ answered {response.status_code}", connector=self.name
            )
        return self._clock() - started

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        """``GET /v2/<name>/manifests/<reference>``; ``None`` if not there.

        ``Accept`` lists ``accept`` or every type :meth:`Manifest.parse`
        accepts. The answer must be at most ``MAX_MANIFEST_SIZE`` bytes and,
        when the upstream sends ``Docker-Content-Digest`` or the reference is a
        digest, hash to that digest; otherwise ``DigestMismatch``. A
        document that does not parse is an ``UpstreamError``.
        """
        upstream, digest = self._check(repository, reference)
        if upstream is None:
            return None
        types = tuple(accept) if accept else MANIFEST_MEDIA_TYPES
        headers = {"Accept": ", ".join(types)}
        url = self._url(upstream, "manifests", reference)
        with self._translating(repository, digest):
            response = await self._send("GET", url, self._scope(upstream), headers)
            try:
                if await self._absent(response):
                    return None
                if response.status_code != 200:
                    await self._fail(response, repository, digest)
                data = await self._read_capped(response, MAX_MANIFEST_SIZE, repository, digest)
            finally:
                await response.aclose()
        self._check_digest_header(response, data, repository, digest)
        if digest is not None and not _hashes_to(data, digest):
            raise DigestMismatch(
                "manifest bytes do not match the digest they were asked by",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        content_type = base_media_type(response.headers.get("content-type", ""))
        media_type = content_type if content_type in MANIFEST_MEDIA_TYPES else None
        try:
            return Manifest.parse(data, media_type)
        except ManifestInvalid as exc:
            raise UpstreamError(
                f"upstream sent an invalid manifest: {exc.message}",
                connector=self.name,
                repository=repository,
                digest=digest,
            ) from exc

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """``HEAD /v2/<name>/manifests/<reference>``; ``None`` if not there.

        Uses ``Docker-Content-Digest``, ``Content-Type`` and
        ``Content-Length``; when the upstream omits any of them (the spec only
        says it "SHOULD" send the digest) it falls back to a GET.
        """
        upstream, digest = self._check(repository, reference)
        if upstream is None:
            return None
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        url = self._url(upstream, "manifests", reference)
        with self._translating(repository, digest):
            response = await self._send("HEAD", url, self._scope(upstream), headers)
            await response.aclose()
            if await self._absent(response):
                return None
            if response.status_code != 200:
                await self._fail(response, repository, digest)
        header = self._digest_header(response, repository, digest)
        if digest is not None and header is not None and header != digest:
            raise DigestMismatch(
                f"upstream says the manifest asked by digest has digest {header}",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        media_type = base_media_type(response.headers.get("content-type", ""))
        length = _int(response.headers.get("content-length"))
        found = digest or header
        if found is None or length is None or media_type not in MANIFEST_MEDIA_TYPES:
            manifest = await self.get_manifest(repository, reference)
            return None if manifest is None else manifest.descriptor()
        return Descriptor(media_type, found, length)

    async def stat_blob(self, repository: str, digest: Digest | str) -> Descriptor | None:
        """``HEAD /v2/<name>/blobs/<digest>``; ``None`` if not there.

        A redirect (to object storage, whose pre-signed URLs are often valid
        for GET only) is answered by a one-byte ranged GET instead, read from
        ``Content-Range``. The descriptor's media type is
        ``application/octet-stream``: the registry does not know better.
        """
        upstream, want = self._check_blob(repository, digest)
        if upstream is None:
            return None
        url = self._url(upstream, "blobs", str(want))
        with self._translating(repository, want):
            response = await self._send("HEAD", url, self._scope(upstream), {}, follow=False)
            await response.aclose()
            if await self._absent(response):
                return None
            if response.status_code in _REDIRECTS:
                size = await self._size_by_range(upstream, repository, want)
                return None if size is None else _blob_descriptor(want, size)
            if response.status_code != 200:
                await self._fail(response, repository, want)
        header = self._digest_header(response, repository, want)
        if header is not None and header != want:
            raise DigestMismatch(
                f"upstream says blob has digest {header}",
                connector=self.name,
                repository=repository,
                digest=want,
            )
        size = _int(response.headers.get("content-length"))
        if size is None:
            with self._translating(repository, want):
                size = await self._size_by_range(upstream, repository, want)
            if size is None:
                return None
        return _blob_descriptor(want, size)

    async def open_blob(
        self, repository: str, digest: Digest | str, *, offset: int = 0
    ) -> BlobStream | None:
        """``GET /v2/<name>/blobs/<digest>`` from ``offset``; ``None`` if not there.

        Redirects are followed without ``Authorization``. From offset 0 every
        byte is verified as it streams, and the last chunk is held back until
        the whole blob has been checked: a reader that received every byte
        received the right ones, else iteration raises ``DigestMismatch``.
        From a later offset (served with ``Range: bytes=offset-``) the
        connector cannot hash what it never received, so it checks only the
        length; the caller, which holds the earlier bytes, verifies the whole.
        A transfer that breaks is resumed with a ``Range`` request up to
        ``max_resumes`` times, then iteration raises ``UpstreamError`` and the
        caller may resume from the first byte it lacks. An HTML answer (a
        login page or proxy error served with 200) is an ``UpstreamError``.
        ``RangeInvalid`` if ``offset`` is past the blob's end.
        """
        upstream, want = self._check_blob(repository, digest)
        if offset < 0:
            raise RangeInvalid(f"offset must not be negative, not {offset}")
        want.hasher()  # Unsupported, before any I/O, if it could never be verified.
        if upstream is None:
            return None
        with self._translating(repository, want):
            response = await self._blob_request(upstream, want, offset)
            try:
                if await self._absent(response):
                    await response.aclose()
                    return None
                if response.status_code == 416:
                    await response.aclose()
                    return await self._past_end(repository, want, offset)
                if response.status_code not in (200, 206):
                    await self._fail(response, repository, want)
                size, start = self._blob_window(response, repository, want, offset, None)
            except BaseException:
                await response.aclose()
                raise
        body = _BlobBody(self, upstream, repository, want, size, offset, response, start)
        return BlobStream(want, size, body, offset=offset, source=self.name)

    async def tags(self, repository: str) -> list[str] | None:
        """``GET /v2/<name>/tags/list``, following ``Link`` pages; sorted.

        A repository the upstream does not know (404 ``NAME_UNKNOWN``) has no
        tags there: ``[]``.
        """
        upstream = self._check(repository, None)[0]
        if upstream is None:
            return None
        url = f"{self._url(upstream, 'tags', 'list')}?n={_PAGE_SIZE}"
        names = await self._list(url, self._scope(upstream), "tags", repository, missing=[])
        return None if names is None else sorted(set(names))

    async def repositories(self) -> list[str] | None:
        """``GET /v2/_catalog``, following ``Link`` pages; sorted, mapped back to
        the names clients use and filtered by :meth:`serves`.

        ``None`` when the upstream has no catalog for us: it answers 401, 403
        or 404, or an OCI ``UNSUPPORTED`` error (Docker Hub, GHCR, …).
        """
        url = f"{self._base}/v2/_catalog?n={_PAGE_SIZE}"
        try:
            names = await self._list(url, "registry:catalog:*", "repositories", None, missing=None)
        except (Unauthorized, Denied):
            return None
        if names is None:
            return None
        out = {mapped for n in names if (mapped := self.client_name(n)) is not None}
        return sorted(out)

    # -- validation and URLs -------------------------------------------------

    def _check(self, repository: str, reference: str | None) -> tuple[str | None, Digest | None]:
        validate_repository(repository)
        digest = None
        if reference is not None:
            if not isinstance(reference, str):
                raise DigestInvalid(f"reference must be a string, not {type(reference).__name__}")
            if ":" in reference:
                digest = Digest.parse(reference)
            else:
                validate_tag(reference)
        upstream = self.upstream_name(repository)
        if upstream is not None:
            validate_repository(upstream)
        return upstream, digest

    def _check_blob(self, repository: str, digest: Digest | str) -> tuple[str | None, Digest]:
        want = Digest.parse(digest)
        return self._check(repository, None)[0], want

    def _url(self, upstream: str, kind: str, reference: str) -> str:
        return f"{self._base}/v2/{upstream}/{kind}/{reference}"

    @staticmethod
    def _scope(upstream: str) -> str:
        # token.md "Requesting a Token": scope is resourcetype:resourcename:action.
        return f"repository:{upstream}:pull"

    # -- error translation: the one place httpx exceptions are caught ---------

    @contextlib.contextmanager
    def _translating(
        self, repository: str | None = None, digest: Digest | None = None
    ) -> Iterator[None]:
        try:
            yield
        except _HTTPX_ERRORS as exc:
            raise self._translate(exc, repository, digest) from exc

    def _translate(
        self, exc: BaseException, repository: str | None, digest: Digest | None
    ) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            what = "timed out"
        elif isinstance(exc, httpx.ConnectError):
            what = "could not connect"
        elif isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            what = "connection broke"
        else:
            what = "HTTP failure"
        return UpstreamError(
            f"{what}: {type(exc).__name__}: {exc}",
            connector=self.name,
            repository=repository,
            digest=digest,
        )

    async def _absent(self, response: httpx.Response) -> bool:
        """Whether the answer means "not there" (reads a small error body)."""
        if response.status_code == 404:
            return True
        if response.status_code in (400, 410):
            return bool(_ABSENT_CODES & {c for c, _ in await self._oci_errors(response)})
        return False

    async def _oci_errors(self, response: httpx.Response) -> list[tuple[str, str]]:
        if response.request.method == "HEAD":
            return []
        cached = response.extensions.get("dockerconnect.errors")
        if cached is not None:
            return list(cached)
        try:
            raw = await self._read_prefix(response, _MAX_ERROR_BODY)
        except _HTTPX_ERRORS:
            raw = b""
        found: list[tuple[str, str]] = []
        try:
            doc = json.loads(raw)
            for entry in doc.get("errors", []) if isinstance(doc, dict) else []:
                if isinstance(entry, dict):
                    found.append((str(entry.get("code", "")), str(entry.get("message", ""))))
        except ValueError:
            pass
        response.extensions["dockerconnect.errors"] = found
        return found

    async def _fail(
        self, response: httpx.Response, repository: str | None, digest: Digest | None
    ) -> NoReturn:
        """Raise the typed error for a non-success answer."""
        errors = await self._oci_errors(response)
        codes = {c for c, _ in errors}
        status = response.status_code
        summary = "; ".join(f"{c}: {m}" if m else c for c, m in errors)
        message = f"upstream answered {status}" + (f" ({summary})" if summary else "")
        kwargs: dict[str, Any] = {
            "connector": self.name,
            "repository": repository,
            "digest": digest,
            "detail": [{"code": c, "message": m} for c, m in errors] or None,
        }
        if status == 429 or "TOOMANYREQUESTS" in codes:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise TooManyRequests(message, retry_after=retry_after, **kwargs)
        if status == 401 or "UNAUTHORIZED" in codes:
            raise Unauthorized(message, **kwargs)
        if status == 403 or "DENIED" in codes:
            raise Denied(message, **kwargs)
        raise UpstreamError(message, **kwargs)

    def _digest_header(
        self, response: httpx.Response, repository: str, digest: Digest | None
    ) -> Digest | None:
        value = response.headers.get("docker-content-digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestInvalid as exc:
            raise UpstreamError(
                f"upstream sent a malformed Docker-Content-Digest {value!r}",
                connector=self.name,
                repository=repository,
                digest=digest,
            ) from exc

    def _check_digest_header(
        self, response: httpx.Response, data: bytes, repository: str, digest: Digest | None
    ) -> None:
        header = self._digest_header(response, repository, digest)
        if header is None or not header.verifiable:
            return
        if not _hashes_to(data, header):
            raise DigestMismatch(
                f"manifest bytes do not match the Docker-Content-Digest {header} sent with them",
                connector=self.name,
                repository=repository,
                digest=digest or header,
            )

    # -- reading ---------------------------------------------------------------

    async def _read_capped(
        self, response: httpx.Response, cap: int, repository: str, digest: Digest | None
    ) -> bytes:
        length = _int(response.headers.get("content-length"))
        if length is not None and length > cap:
            raise UpstreamError(
                f"upstream manifest is {length} bytes, over the {cap} byte limit",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        data = await self._read_prefix(response, cap + 1)
        if len(data) > cap:
            raise UpstreamError(
                f"upstream manifest is over the {cap} byte limit",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        return data

    @staticmethod
    async def _read_prefix(response: httpx.Response, cap: int) -> bytes:
        """At most ``cap`` bytes of the body: a hostile upstream cannot make us
        buffer more than that."""
        parts: list[bytes] = []
        total = 0
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            parts.append(chunk)
            total += len(chunk)
            if total >= cap:
                await _abandon(response, chunks)
                break
        return b"".join(parts)[:cap]

    # -- blobs -------------------------------------------------------------------

    async def _blob_request(self, upstream: str, digest: Digest, offset: int) -> httpx.Response:
        # identity: a transfer-compressed blob would not hash to its digest.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self._url(upstream, "blobs", str(digest))
        return await self._send("GET", url, self._scope(upstream), headers)

    def _blob_window(
        self,
        response: httpx.Response,
        repository: str,
        digest: Digest,
        offset: int,
        size: int | None,
    ) -> tuple[int, int]:
        """Check a blob answer; return (total size, position of its first byte).

        A ``206`` must start at ``offset``; a ``200`` (a server that ignores
        ``Range``) starts at 0, and the caller skips what it does not need.
        """
        status = response.status_code
        content_type = base_media_type(response.headers.get("content-type", ""))
        if status in (200, 206) and content_type in ("text/html", "application/xhtml+xml"):
            raise UpstreamError(
                f"upstream answered {status} with an HTML page instead of blob bytes",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
            if match is None or match.group(3) == "*" or int(match.group(1)) != offset:
                raise UpstreamError(
                    "upstream answered a range request with an unusable Content-Range "
                    f"{response.headers.get('content-range')!r}",
                    connector=self.name,
                    repository=repository,
                    digest=digest,
                )
            total, start = int(match.group(3)), offset
        elif status == 200:
            length = _int(response.headers.get("content-length"))
            if length is None:
                raise UpstreamError(
                    "upstream sent a blob without Content-Length",
                    connector=self.name,
                    repository=repository,
                    digest=digest,
                )
            total, start = length, 0
        else:
            raise UpstreamError(
                f"upstream answered a blob request with {status}",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        if size is not None and total != size:
            raise UpstreamError(
                f"upstream changed the blob's size from {size} to {total} while resuming",
                connector=self.name,
                repository=repository,
                digest=digest,
            )
        if offset > total:
            raise RangeInvalid(
                f"offset {offset} is past the end of the {total} byte blob",
                repository=repository,
                digest=digest,
            )
        return total, start

    async def _past_end(self, repository: str, digest: Digest, offset: int) -> BlobStream | None:
        found = await self.stat_blob(repository, digest)
        if found is None:
            return None
        if offset != found.size:
            raise RangeInvalid(
                f"offset {offset} is past the end of the {found.size} byte blob",
                repository=repository,
                digest=digest,
            )
        return BlobStream(digest, found.size, _empty(), offset=offset, source=self.name)

    async def _size_by_range(self, upstream: str, repository: str, digest: Digest) -> int | None:
        headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
        url = self._url(upstream, "blobs", str(digest))
        response = await self._send("GET", url, self._scope(upstream), headers)
        try:
            if await self._absent(response):
                return None
            if response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
                if match is not None and match.group(3) != "*":
                    return int(match.group(3))
            elif response.status_code == 200:
                length = _int(response.headers.get("content-length"))
                if length is not None:
                    return length
            else:
                await self._fail(response, repository, digest)
        finally:
            await response.aclose()
        raise UpstreamError(
            "upstream did not say how large the blob is",
            connector=self.name,
            repository=repository,
            digest=digest,
        )

    async def _resume(
        self, upstream: str, repository: str, digest: Digest, position: int, size: int
    ) -> tuple[httpx.Response, int]:
        response = await self._blob_request(upstream, digest, position)
        try:
            if response.status_code in (200, 206):
                _, start = self._blob_window(response, repository, digest, position, size)
                return response, start
            if await self._absent(response):
                raise UpstreamError(
                    "blob disappeared upstream while it was being downloaded",
                    connector=self.name,
                    repository=repository,
                    digest=digest,
                )
            await self._fail(response, repository, digest)
        except BaseException:
            await response.aclose()
            raise

    # -- listing -----------------------------------------------------------------

    async def _list(
        self, url: str, scope: str, key: str, repository: str | None, *, missing: list[str] | None
    ) -> list[str] | None:
        """Every name of a paginated listing; ``None`` if it cannot be listed
        (405 or ``UNSUPPORTED``), ``missing`` if the first page is a 404.

        distribution-spec "Listing Tags": the ``Link`` header carries the next
        page as ``<url>; rel="next"``.
        """
        names: list[str] = []
        seen: set[str] = set()
        next_url: str | None = url
        with self._translating(repository):
            while next_url is not None:
                if next_url in seen or len(seen) >= _MAX_PAGES:
                    raise UpstreamError("upstream's listing pagination loops", connector=self.name)
                seen.add(next_url)
                response = await self._send("GET", next_url, scope, {"Accept": "application/json"})
                try:
                    if response.status_code != 200:
                        errors = {c for c, _ in await self._oci_errors(response)}
                        if response.status_code == 404 or "NAME_UNKNOWN" in errors:
                            return missing
                        if response.status_code == 405 or "UNSUPPORTED" in errors:
                            return None
                        await self._fail(response, repository, None)
                    raw = await self._read_prefix(response, MAX_MANIFEST_SIZE + 1)
                finally:
                    await response.aclose()
                names.extend(self._names(raw, key, repository))
                next_url = self._next_page(response)
        return names

    def _names(self, raw: bytes, key: str, repository: str | None) -> list[str]:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(
                f"upstream sent a {key} listing that is not JSON",
                connector=self.name,
                repository=repository,
            ) from exc
        values = doc.get(key) if isinstance(doc, dict) else None
        if values is None:
            return []  # distribution sends "tags": null for a repository without tags
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise UpstreamError(
                f"upstream's {key} listing is not a list of strings",
                connector=self.name,
                repository=repository,
            )
        return values

    def _next_page(self, response: httpx.Response) -> str | None:
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        target = response.url.join(link)
        if _origin(target) != self._origin:
            raise UpstreamError(
                f"upstream's next page is on another host ({_loggable(target)})",
                connector=self.name,
            )
        return str(target)

    # -- sending: auth, retries, redirects ------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        scope: str,
        headers: dict[str, str],
        *,
        follow: bool = True,
    ) -> httpx.Response:
        """Send with auth: on a 401 challenge, authenticate and try once more.

        Returns a streaming response the caller closes; raises
        ``UpstreamError`` (translated) when no answer could be had.
        """
        authorization = await self._authorization(scope)
        response = await self._transmit(method, url, headers, authorization, follow=follow)
        if response.status_code != 401:
            return response
        await self._oci_errors(response)  # keep the body's codes for _fail
        if not await self._on_challenge(response, scope, authorization):
            return response
        await response.aclose()
        authorization = await self._authorization(scope)
        return await self._transmit(method, url, headers, authorization, follow=follow)

    async def _authorization(self, scope: str) -> str | None:
        if self._bearer is not None:
            token = self._tokens.get(scope)
            if token is None:
                token = await self._fetch_token(self._bearer, scope, scope, stale=None)
            return f"Bearer {token}"
        if self._basic and self._credentials is not None:
            return self._credentials.basic()
        return None

    async def _on_challenge(self, response: httpx.Response, scope: str, sent: str | None) -> bool:
        """Learn from a 401 how to authenticate; whether trying again can help."""
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                self._bearer = challenge
                stale = sent[len("Bearer ") :] if sent and sent.startswith("Bearer ") else None
                asked = challenge.params.get("scope") or scope
                await self._fetch_token(challenge, scope, asked, stale=stale, force=True)
                return True
        for challenge in challenges:
            if challenge.scheme == "basic" and self._credentials is not None:
                if sent is not None and sent.startswith("Basic "):
                    return False  # the credentials themselves were refused
                self._basic = True
                return True
        return False

    async def _fetch_token(
        self,
        challenge: Challenge,
        key: str,
        scope: str,
        *,
        stale: str | None,
        force: bool = False,
    ) -> str:
        """Ask the realm for a token for ``scope``; cache it under ``key``.

        One fetch per scope at a time: concurrent requests wait for it and
        share its result rather than each asking the token server.
        """
        lock = self._token_locks.setdefault(key, anyio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            # Another task may have refreshed the token while we waited.
            if cached is not None and (not force or cached != stale):
                return cached
            realm = challenge.realm
            assert realm is not None
            params: dict[str, str] = {}
            if "service" in challenge.params:
                params["service"] = challenge.params["service"]
            if scope:
                params["scope"] = scope
            target = httpx.URL(realm)
            if target.scheme not in ("http", "https"):
                raise UpstreamError(f"token realm {realm!r} is not http(s)", connector=self.name)
            authorization = None
            if self._credentials is not None and self._may_send_credentials(target):
                authorization = self._credentials.basic()
            with self._translating():
                response = await self._transmit(
                    "GET", str(target.copy_merge_params(params)), {}, authorization, follow=True
                )
                try:
                    if response.status_code != 200:
                        await self._fail(response, None, None)
                    raw = await self._read_prefix(response, _MAX_ERROR_BODY * 4)
                finally:
                    await response.aclose()
            token, expires_in = self._parse_token(raw)
            self._tokens.put(key, token, expires_in)
            logger.debug(
                "%s: got a token for scope %s from %s", self.name, scope, _loggable(target)
            )
            return token

    def _parse_token(self, raw: bytes) -> tuple[str, float | None]:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError(
                "token server answered something other than JSON", connector=self.name
            )
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise UpstreamError("token server answered without a token", connector=self.name)
        expires_in = doc.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
            return token, None
        if expires_in <= 0:
            return token, None
        return token, expires_in

    def _may_send_credentials(self, target: httpx.URL) -> bool:
        # Basic credentials are sent to a token realm only over TLS, or to the
        # registry's own host (a plain-http registry for local development):
        # never in clear text to a third host.
        return target.scheme == "https" or target.host == httpx.URL(self._base).host

    async def _transmit(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        *,
        follow: bool,
    ) -> httpx.Response:
        """One logical request with retries (see :class:`Retry`)."""
        policy = self.retry
        deadline = self._clock() + policy.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._exchange(method, url, headers, authorization, follow=follow)
            except _RETRYABLE_HTTPX as exc:
                delay = policy.delay(attempt, self._rng)
                if attempt >= policy.attempts or self._clock() + delay > deadline:
                    raise
                logger.info(
                    "%s: %s %s failed (%s), retrying in %.2fs",
                    self.name,
                    method,
                    _loggable(httpx.URL(url)),
                    type(exc).__name__,
                    delay,
                )
                await self._sleep(delay)
                continue
            self._note_rate_limit(response)
            if response.status_code not in RETRY_STATUSES or attempt >= policy.attempts:
                return response
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            delay = policy.delay(attempt, self._rng) if retry_after is None else retry_after
            if delay > policy.max_retry_after or self._clock() + delay > deadline:
                return response
            logger.info(
                "%s: %s %s answered %d, retrying in %.2fs",
                self.name,
                method,
                _loggable(httpx.URL(url)),
                response.status_code,
                delay,
            )
            await response.aclose()
            await self._sleep(delay)

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        *,
        follow: bool = True,
    ) -> httpx.Response:
        """Send once, following redirects by hand so that ``Authorization``
        goes only to the origin it was meant for."""
        current = httpx.URL(url)
        home = _origin(current)
        for _ in range(_MAX_REDIRECTS + 1):
            hop = {"User-Agent": self._user_agent, **headers}
            if authorization is not None and _origin(current) == home:
                hop["Authorization"] = authorization
            request = self._client.build_request(
                method, current, headers=hop, timeout=self._timeout
            )
            response = await self._client.send(request, stream=True, follow_redirects=False)
            logger.debug(
                "%s: %s %s -> %d", self.name, method, _loggable(current), response.status_code
            )
            location = response.headers.get("location")
            if not follow or response.status_code not in _REDIRECTS or not location:
                return response
            await response.aclose()
            current = response.url.join(location)
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
        raise UpstreamError(f"more than {_MAX_REDIRECTS} redirects", connector=self.name)

    def _note_rate_limit(self, response: httpx.Response) -> None:
        found = RateLimit.from_headers(response.headers, time.time())
        if found is not None:
            self.rate_limit = found


class _BlobBody:
    """The chunks of one blob download: verified, resumed, and closable even
    when never iterated (so the response it holds is always released)."""

    def __init__(
        self,
        connector: HttpConnector,
        upstream: str,
        repository: str,
        digest: Digest,
        size: int,
        offset: int,
        response: httpx.Response,
        start: int,
    ) -> None:
        self._connector = connector
        self._upstream = upstream
        self._repository = repository
        self._digest = digest
        self._size = size
        self._offset = offset
        self._response: httpx.Response | None = response
        self._start = start
        self._iterator: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return self._iterator

    async def aclose(self) -> None:
        iterator, self._iterator = self._iterator, None
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._response is not None:
            response, self._response = self._response, None
            await response.aclose()

    def _error(self, cls: type[DockerConnectError], message: str) -> DockerConnectError:
        return cls(
            message,
            connector=self._connector.name,
            repository=self._repository,
            digest=self._digest,
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        c = self._connector
        size, position = self._size, self._offset
        # Only a download that starts at byte 0 can be hashed; with a server
        # that answers a ranged GET with the whole blob (200), it does.
        verify = c.verify_blobs and self._start == 0
        verifier = DigestVerifier(self._digest, size) if verify else None
        # Hashing is pipelined: chunk N is hashed in a worker thread while chunk
        # N+1 is received, instead of the loop waiting for each hash (which
        # costs a thread round trip per chunk and overlaps nothing). Only this
        # generator schedules work on the verifier, one update at a time, in order.
        hashed_to = 0  # blob position up to which hashing has been scheduled
        hashing: concurrent.futures.Future[None] | None = None
        held: bytes | None = None
        resumes = 0
        while True:
            response = self._response
            assert response is not None
            at = self._start  # blob position of the next byte this response sends
            failure: BaseException | None = None
            body = response.aiter_bytes(CHUNK_SIZE)
            finished = False
            try:
                async for chunk in body:
                    end = at + len(chunk)
                    if end > size:
                        raise self._error(SizeInvalid, f"upstream sent more than {size} bytes")
                    if verifier is not None and hashed_to < end:
                        part = chunk[max(0, hashed_to - at) :]
                        hashed_to = end
                        if hashing is not None:
                            await _finished(hashing)
                            hashing = None
                        if len(part) >= THREAD_HASH_THRESHOLD:
                            hashing = c._hash_pool().submit(verifier.update, part)
                        else:
                            verifier.update(part)
                    if end > position:
                        piece = chunk[max(0, position - at) :]
                        position = end
                        if verifier is None:
                            yield piece
                        else:
                            if held is not None:
                                yield held
                            held = piece
                    at = end
                finished = True
            except _HTTPX_ERRORS as exc:
                failure, finished = exc, True
            finally:
                self._response = None
                if finished:
                    await response.aclose()
                else:  # the reader stopped early, or the bytes were wrong
                    await _abandon(response, body)
            if position >= size:
                break
            if resumes >= c.max_resumes:
                error = self._error(
                    UpstreamError,
                    f"transfer broke at byte {position} of {size} "
                    f"after {resumes} resume(s)" + (f": {failure}" if failure else ""),
                )
                raise error from failure
            resumes += 1
            logger.info(
                "%s: blob %s broke at byte %d of %d (%s); resuming",
                c.name,
                self._digest,
                position,
                size,
                type(failure).__name__ if failure else "short body",
            )
            with c._translating(self._repository, self._digest):
                self._response, self._start = await c._resume(
                    self._upstream, self._repository, self._digest, position, size
                )
        if hashing is not None:
            await _finished(hashing)
        if verifier is not None and not verifier.ok:
            raise self._error(
                DigestMismatch, f"upstream sent {size} bytes that do not hash to the blob's digest"
            )
        if held is not None:
            yield held


async def _finished(future: concurrent.futures.Future[None]) -> None:
    """Wait for a hashing job without blocking the event loop."""
    if not future.done():
        await anyio.to_thread.run_sync(future.result)
    future.result()


#: How many more reads an abandoned body gets to end itself.
_ABANDON_READS = 64


async def _abandon(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading a body midway without leaving httpx's generators to the GC.

    httpx reads bodies through a chain of async generators; closing the
    outermost does not close the ones inside it, and trio warns about (and
    asyncio defers) generators collected unfinished. Closing the response
    closes the connection under the chain, so the next read ends every
    generator in it with an error, which finalises them all now. Shielded,
    since this also runs when the reader is being cancelled.
    """
    with anyio.CancelScope(shield=True):
        await response.aclose()
        try:
            for _ in range(_ABANDON_READS):
                await chunks.__anext__()
        except StopAsyncIteration:
            return
        except Exception:  # the error that ends the chain is the point, not a fault
            return
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover  (makes this an async generator)


def _hashes_to(data: bytes, digest: Digest) -> bool:
    verifier = DigestVerifier(digest)
    verifier.update(data)
    return verifier.ok


def _blob_descriptor(digest: Digest, size: int) -> Descriptor:
    return Descriptor("application/octet-stream", digest, size)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None
