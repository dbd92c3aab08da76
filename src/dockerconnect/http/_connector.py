"""``HttpConnector``: the registry HTTP API v2 (OCI distribution-spec) over httpx.

The connector holds configuration and Docker Hub naming, validates input and
delegates to its rooms: :mod:`~dockerconnect.http._client` (sending: auth,
retries, redirects, deadlines; the only code that catches ``httpx``
exceptions), :mod:`~dockerconnect.http._manifests`,
:mod:`~dockerconnect.http._blobs` (the Range protocol and resume) and
:mod:`~dockerconnect.http._listing` (pagination).
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
import httpx

from dockerconnect._closing import AsyncClosing
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, Manifest
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._registry_connector import matches_patterns
from dockerconnect._stream import BlobStream
from dockerconnect.errors import (
    Denied,
    DigestInvalid,
    DockerConnectError,
    InvalidInput,
    RangeInvalid,
    Unauthorized,
)
from dockerconnect.http._auth import Credentials
from dockerconnect.http._blobs import Blobs, DigestTarget
from dockerconnect.http._client import Client, Limits
from dockerconnect.http._errors import Failures, loggable
from dockerconnect.http._listing import Lister, ListingBounds
from dockerconnect.http._manifests import Manifests, ManifestTarget
from dockerconnect.http._referrers import Referrers
from dockerconnect.http._retry import RateLimit, Retry

__all__ = ["DOCKER_HUB_URL", "HttpConnector"]

#: Where Docker Hub's registry API lives; ``docker.io`` is only its name.
DOCKER_HUB_URL = "https://registry-1.docker.io"
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: Connect quickly or fail over; reads may legitimately be slow on big blobs.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_RETRY = Retry()
DEFAULT_LIMITS = Limits()
DEFAULT_LISTING = ListingBounds()
_USER_AGENT = "dockerconnect/0.1 (+httpx)"
# A host as it goes on the wire: an IDNA-encoded name, IPv4, or an IPv6 literal.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%]*")


class HttpConnector(AsyncClosing):
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

    Time: ``limits`` (:class:`Limits`) sets a deadline per request for the
    answer's headers and for small bodies (manifests, tokens, listing pages),
    and a minimum transfer rate for blob bodies; past either the request
    fails with :class:`~dockerconnect.errors.UpstreamTimeout`, so a resolver
    moves on to its next connector instead of waiting on a trickle.
    ``listing`` (:class:`ListingBounds`) bounds the pages, names and bytes
    one tag or catalog listing may take. ``connect_timeout`` (seconds)
    bounds each TCP/TLS connect on its own, as containerd's ``dial_timeout``
    does: a short one (1-3 s) makes failover from a dead upstream fast,
    while ``timeout`` keeps its read, write and pool parts (connect 10 s by
    default).

    ``client`` (an ``httpx.AsyncClient`` the caller owns and closes) or
    ``transport`` may be injected; otherwise the connector makes its own
    client, closed by :meth:`aclose` or ``async with``. ``clock`` (monotonic
    seconds) and ``sleep`` are injectable so token expiry and backoff can be
    tested without waiting.

    Blob streams hash what they deliver, so the connector is safe on its
    own. A consumer that verifies every byte itself, as a
    :class:`~dockerconnect.Resolver` does, says so with
    :meth:`BlobStream.defer_verification <dockerconnect.BlobStream.defer_verification>`
    and the stream then checks only its length: each byte is hashed once.
    ``verify_blobs=False`` makes every stream check only its length.
    Manifests are always verified.
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
        connect_timeout: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        listing: ListingBounds = DEFAULT_LISTING,
        max_resumes: int = 3,
        verify_blobs: bool = True,
        verify: ssl.SSLContext | str | bool = True,
        user_agent: str = _USER_AGENT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        _check_options(client, transport, max_resumes)
        parsed, creds, hub = _registry_url(url, Credentials.coerce(credentials))
        self._base = str(parsed).rstrip("/")
        #: The name this connector reports in errors and as ``BlobStream.source``.
        self.name: str = name or ("docker.io" if hub else parsed.netloc.decode("ascii"))
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.prefix = _prefix(prefix)
        self.library = hub if library is None else library
        self.retry = retry
        self.max_resumes = max_resumes
        httpx_timeout = _timeout(timeout, connect_timeout)
        http = client or httpx.AsyncClient(
            transport=transport, timeout=httpx_timeout, verify=verify, follow_redirects=False
        )
        self._client = Client(
            Failures(self.name),
            http,
            owns=client is None,
            home=parsed.host,
            credentials=creds,
            retry=retry,
            timeout=httpx_timeout,
            limits=limits,
            user_agent=user_agent,
            clock=clock,
            sleep=sleep,
        )
        self._manifests = Manifests(self._client)
        self._blobs = Blobs(
            self._client, source=self.name, max_resumes=max_resumes, verify=verify_blobs
        )
        origin = (parsed.scheme, parsed.host, parsed.port)
        self._lister = Lister(self._client, origin, listing)
        self._referrers = Referrers(self._client, origin, listing)

    # -- configuration -------------------------------------------------------

    @property
    def url(self) -> str:
        """The registry's base URL (without credentials)."""
        return self._base

    @property
    def verify_blobs(self) -> bool:
        """Whether blob streams hash what they deliver (see the class docs)."""
        return self._blobs.verify

    @verify_blobs.setter
    def verify_blobs(self, value: bool) -> None:
        self._blobs.verify = value

    @property
    def limits(self) -> Limits:
        """The deadline and minimum transfer rate of each request."""
        return self._client.limits

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate limit the upstream last announced, or ``None`` if it never
        did (read it to export metrics or to back off early)."""
        return self._client.rate_limit

    async def aclose(self) -> None:
        """Release the hashing threads, and close the HTTP client if this
        connector made it (an injected one is left open)."""
        self._blobs.close()
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpConnector({self._base!r}, name={self.name!r})"

    # -- routing and Docker Hub naming ----------------------------------------

    def serves(self, repository: str) -> bool:
        """Whether ``repository`` (as the client names it) is asked of this upstream."""
        if self.prefix is not None and not repository.startswith(self.prefix + "/"):
            return False
        return matches_patterns(repository, self.include, self.exclude)

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
        reachability, not credentials. Raises ``UpstreamError`` otherwise,
        whose message names the URL asked.
        """
        started = anyio.current_time()
        url = f"{self._base}/v2/"
        try:
            response = await self._client.send("GET", url, retry=False)
        except DockerConnectError as exc:
            raise self._client.failures.error(
                f"health probe GET {loggable(url)}: {exc.message}", cls=type(exc)
            ) from (exc.__cause__ or exc)  # the httpx exception, as for every call
        await response.aclose()
        if response.status_code not in (200, 401):
            raise self._client.failures.error(
                f"health probe GET {loggable(url)} answered {response.status_code}"
            )
        return anyio.current_time() - started

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | str | None = None
    ) -> Manifest | None:
        """``GET /v2/<name>/manifests/<reference>``; ``None`` if not there.

        ``Accept`` lists ``accept`` (a sequence of media types, or one as a
        string) or every type :meth:`Manifest.parse` accepts. The answer must
        be at most ``MAX_MANIFEST_SIZE`` bytes and, when the upstream sends
        ``Docker-Content-Digest`` or the reference is a digest, hash to that
        digest; otherwise ``DigestMismatch``. A document that does not parse
        is an ``UpstreamError``.
        """
        target = self._manifest_target(repository, reference)
        if target is None:
            return None
        return await self._manifests.get(target, _accept(accept))

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """``HEAD /v2/<name>/manifests/<reference>``; ``None`` if not there.

        Uses ``Docker-Content-Digest``, ``Content-Type`` and
        ``Content-Length``; when the upstream omits any of them (the spec only
        says it "SHOULD" send the digest) it falls back to a GET.
        """
        target = self._manifest_target(repository, reference)
        if target is None:
            return None
        return await self._manifests.head(target)

    async def stat_blob(self, repository: str, digest: Digest | str) -> Descriptor | None:
        """``HEAD /v2/<name>/blobs/<digest>``; ``None`` if not there.

        A redirect (to object storage, whose pre-signed URLs are often valid
        for GET only) is answered by a one-byte ranged GET instead, read from
        ``Content-Range``. An HTML answer (a login page served with 200) is an
        ``UpstreamError``, not "exists". The descriptor's media type is
        ``application/octet-stream``: the registry does not know better.
        """
        target = self._blob_target(repository, digest)
        return None if target is None else await self._blobs.stat(target)

    async def open_blob(
        self, repository: str, digest: Digest | str, *, offset: int = 0
    ) -> BlobStream | None:
        """``GET /v2/<name>/blobs/<digest>`` from ``offset``; ``None`` if not there.

        Redirects are followed without ``Authorization``. From offset 0 every
        byte is verified as it streams, and the last chunk is held back until
        the whole blob has been checked: a reader that received every byte
        received the right ones, else iteration raises ``DigestMismatch``
        (unless ``verify_blobs=False``, or the stream's
        :meth:`~dockerconnect.BlobStream.defer_verification` was called
        before iterating: then only the length is checked). From a later
        offset (served with ``Range: bytes=offset-``) the connector cannot
        hash what it never received, so it checks only the length; the
        caller, which holds the earlier bytes, verifies the whole. A transfer
        that breaks is resumed with a ``Range`` request from the first byte
        not yet received, up to ``max_resumes`` times, then iteration raises
        ``UpstreamError`` and the caller may resume from the first byte it
        lacks. A body slower than ``limits.min_rate`` raises
        ``UpstreamTimeout`` at once. The bytes are the raw body: a
        ``Content-Encoding`` is never decoded. An HTML answer (a login page
        or proxy error served with 200) is an ``UpstreamError``.
        ``RangeInvalid`` if ``offset`` is past the blob's end.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RangeInvalid(f"offset must be a non-negative int, not {offset!r}")
        want = Digest.parse(digest)
        want.hasher()  # Unsupported, before any I/O, if it could never be verified.
        target = self._blob_target(repository, want)
        return None if target is None else await self._blobs.open(target, offset)

    async def tags(self, repository: str) -> list[str] | None:
        """``GET /v2/<name>/tags/list``, following ``Link`` pages; sorted.

        A repository the upstream does not know (404 ``NAME_UNKNOWN``) has no
        tags there: ``[]``. An HTML answer or a redirect loop is an
        ``UpstreamError``; a listing past the bounds of ``listing``
        (:class:`ListingBounds`) is ``ListingTooLarge``.
        """
        upstream = self._upstream(repository)
        if upstream is None:
            return None
        url = f"{self._base}/v2/{upstream}/tags/list?n={self._lister.bounds.page_size}"
        names = await self._lister.names(url, _scope(upstream), "tags", repository, missing=[])
        return None if names is None else sorted(set(names))

    async def repositories(self) -> list[str] | None:
        """``GET /v2/_catalog``, following ``Link`` pages; sorted, mapped back to
        the names clients use and filtered by :meth:`serves`.

        ``None`` when the upstream has no catalog for us: it answers 401, 403
        or 404, or an OCI ``UNSUPPORTED`` error (Docker Hub, GHCR, …).
        """
        url = f"{self._base}/v2/_catalog?n={self._lister.bounds.page_size}"
        try:
            names = await self._lister.names(
                url, "registry:catalog:*", "repositories", None, missing=None
            )
        except (Unauthorized, Denied):
            return None
        if names is None:
            return None
        return sorted({m for n in names if (m := self.client_name(n)) is not None})

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """``GET /v2/<name>/referrers/<digest>`` (``?artifactType=``); the
        descriptors of the manifests whose ``subject`` is ``digest``.

        ``[]`` when there are none; ``None`` when the upstream has no
        referrers API (a 404 that is not an OCI index, or 405), so the caller
        falls back to the tag schema. Only referrers of ``artifact_type`` are
        kept, whether or not the upstream filtered. Pages (``Link``) are
        followed within ``listing``'s bounds.
        """
        if artifact_type is not None and (
            not isinstance(artifact_type, str)
            or not artifact_type
            or not artifact_type.isprintable()
        ):
            raise InvalidInput(f"artifact_type must be a media type, not {artifact_type!r}")
        want = Digest.parse(digest)
        upstream = self._upstream(repository)
        if upstream is None:
            return None
        url = f"{self._base}/v2/{upstream}/referrers/{want}"
        target = DigestTarget(url, _scope(upstream), repository, want)
        return await self._referrers.fetch(target, artifact_type)

    # -- validation and targets ----------------------------------------------

    def _upstream(self, repository: str) -> str | None:
        validate_repository(repository)
        upstream = self.upstream_name(repository)
        if upstream is not None:
            validate_repository(upstream)
        return upstream

    def _manifest_target(self, repository: str, reference: str) -> ManifestTarget | None:
        if not isinstance(reference, str):
            raise DigestInvalid(f"reference must be a string, not {type(reference).__name__}")
        digest = Digest.parse(reference) if ":" in reference else None
        if digest is None:
            validate_tag(reference)
        upstream = self._upstream(repository)
        if upstream is None:
            return None
        url = f"{self._base}/v2/{upstream}/manifests/{reference}"
        return ManifestTarget(url, _scope(upstream), repository, digest)

    def _blob_target(self, repository: str, digest: Digest | str) -> DigestTarget | None:
        want = Digest.parse(digest)
        upstream = self._upstream(repository)
        if upstream is None:
            return None
        url = f"{self._base}/v2/{upstream}/blobs/{want}"
        return DigestTarget(url, _scope(upstream), repository, want)


def _scope(upstream: str) -> str:
    # token.md "Requesting a Token": scope is resourcetype:resourcename:action.
    return f"repository:{upstream}:pull"


def _accept(accept: Sequence[str] | str | None) -> tuple[str, ...]:
    # A single string is one media type, not a sequence of characters.
    if accept is None:
        return MANIFEST_MEDIA_TYPES
    types = (accept,) if isinstance(accept, str) else tuple(accept)
    if not all(isinstance(t, str) and t and "\n" not in t and "\r" not in t for t in types):
        raise InvalidInput("accept must be media type strings")
    return types or MANIFEST_MEDIA_TYPES


def _check_options(client: object, transport: object, max_resumes: int) -> None:
    if client is not None and transport is not None:
        raise InvalidInput("pass either client or transport, not both")
    if max_resumes < 0:
        raise InvalidInput("max_resumes must not be negative")


def _timeout(timeout: float | httpx.Timeout, connect: float | None) -> httpx.Timeout:
    """httpx's timeouts, with ``connect`` (when given) bounding each connect alone."""
    httpx_timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
    if connect is None:
        return httpx_timeout
    if isinstance(connect, bool) or not isinstance(connect, (int, float)):
        raise InvalidInput("connect_timeout must be a number of seconds")
    if connect <= 0:
        raise InvalidInput("connect_timeout must be a positive number of seconds")
    return httpx.Timeout(
        connect=float(connect),
        read=httpx_timeout.read,
        write=httpx_timeout.write,
        pool=httpx_timeout.pool,
    )


def _prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    prefix = prefix.strip("/")
    validate_repository(prefix)
    return prefix


def _registry_url(
    url: str, credentials: Credentials | None
) -> tuple[httpx.URL, Credentials | None, bool]:
    """The registry's base URL (no user info, query or fragment), the
    credentials (user info in the URL counts, unless others are given) and
    whether it is Docker Hub. ``InvalidInput`` for anything that is not an
    http(s) URL with a valid host and port."""
    parsed = _parse_url(url)
    if parsed.userinfo:
        if credentials is None:
            credentials = Credentials(parsed.username, parsed.password)
        parsed = parsed.copy_with(username=None, password=None)
    hub = parsed.host in _DOCKER_HUB_HOSTS
    if hub:
        parsed = httpx.URL(DOCKER_HUB_URL)
    return parsed.copy_with(query=None, fragment=None), credentials, hub


def _parse_url(url: str) -> httpx.URL:
    """``url`` parsed, ``https://`` when it names no scheme; ``InvalidInput``
    for anything that is not an http(s) URL with a valid host and port and
    without the API path."""
    if not isinstance(url, str):
        raise InvalidInput(f"registry URL must be a string, not {type(url).__name__}")
    base = url.strip()
    if "://" not in base:
        base = "https://" + base
    try:
        parsed = httpx.URL(base)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidInput(f"not a valid registry URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInput(f"not an http(s) registry URL: {url!r}")
    if not _HOST.fullmatch(parsed.raw_host.decode("ascii", "replace")):
        raise InvalidInput(f"registry URL {url!r} has an invalid host {parsed.host!r}")
    if port is not None and not 0 < port <= 65535:
        raise InvalidInput(f"registry URL {url!r} has an invalid port {port}")
    if "v2" in parsed.path.split("/"):
        # The connector adds /v2/ itself; a base URL naming it would ask /v2/v2/.
        base_url = parsed.copy_with(path=parsed.path.split("/v2", 1)[0] or "/", query=None)
        raise InvalidInput(
            f"registry URL {loggable(base)!r} has the API path {parsed.path!r} in it: "
            f"give the registry's base URL, {loggable(str(base_url)).rstrip('/')}"
        )
    return parsed
