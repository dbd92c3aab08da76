"""Sending one request: auth, retries, redirects, deadlines, bounded reads.

:class:`Client` is the only code of the connector that touches ``httpx``
failures: every ``httpx`` exception raised while sending a request or reading
its body is caught here and turned into an
:class:`~dockerconnect.errors.UpstreamError` naming the connector (the
``httpx`` exception is its ``__cause__``). A new connector method that goes
through :meth:`Client.send`, :meth:`Client.read` and :meth:`Client.stream`
cannot leak one.

Time limits, all per attempt:

- ``deadline``: the longest wait for an answer's headers (redirects
  included), and for the whole body of a small answer (a manifest, a token,
  a listing page, an error). Blob bodies can be any size, so instead
- ``min_rate`` bytes per second, over each ``rate_window`` seconds: a blob
  body that delivers less than ``min_rate * rate_window`` bytes in a window
  fails when its next bytes arrive, and one that stalls outright fails when
  no byte came for ``rate_window`` seconds (a read timeout, which is resumed
  like a dropped connection).

Either failure is an :class:`~dockerconnect.errors.UpstreamTimeout` and is not retried
on the same upstream: the caller (a resolver) fails over to the next source.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import NoReturn

import anyio
import attrs
import httpx

from dockerconnect._digest import Digest
from dockerconnect.errors import DockerConnectError, InvalidInput, UpstreamError, UpstreamTimeout
from dockerconnect.http._auth import Authenticator, Credentials
from dockerconnect.http._errors import ABSENT_CODES, Failures, loggable, parse_oci_errors, redacted
from dockerconnect.http._retry import RETRY_STATUSES, RateLimit, Retry, parse_retry_after

__all__ = ["REDIRECTS", "Client", "Limits"]

logger = logging.getLogger("dockerconnect.http")

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
#: Enough for any OCI error body; more is not read.
_MAX_ERROR_BODY = 64 * 1024
_HTTPX_ERRORS = (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL)
_RETRYABLE_HTTPX = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
#: How many more reads an abandoned body gets to end itself.
_ABANDON_READS = 64
#: Bytes httpcore asks the socket for at a time (its own default is 64 KiB).
#: Each read costs an h11 event and a timeout scope: on a 256 MiB blob from a
#: local docker-registry, 256 KiB reads took 1.35x less CPU per MiB than
#: 64 KiB ones (benchmarks in docs/performance.md).
SOCKET_READ = 256 * 1024


def _larger_socket_reads() -> None:
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # pragma: no cover - another httpcore layout: keep its default
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", SOCKET_READ) < SOCKET_READ:
        AsyncHTTP11Connection.READ_NUM_BYTES = SOCKET_READ


_larger_socket_reads()


@attrs.frozen(slots=True)
class Limits:
    """How long one request may take (see the module docs); seconds and bytes/s."""

    deadline: float = 30.0
    min_rate: float = 32 * 1024
    rate_window: float = 10.0

    def __attrs_post_init__(self) -> None:
        if not (self.deadline > 0 and self.rate_window > 0 and self.min_rate >= 0):
            raise InvalidInput(
                "Limits: deadline and rate_window must be positive, min_rate not negative"
            )


class Client:
    """Sends requests for one connector: the single door to ``httpx``."""

    def __init__(
        self,
        failures: Failures,
        http: httpx.AsyncClient,
        *,
        owns: bool,
        home: str,
        credentials: Credentials | None,
        retry: Retry,
        timeout: httpx.Timeout,
        limits: Limits,
        user_agent: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.failures = failures
        self.retry = retry
        self.limits = limits
        #: The rate limit the upstream last announced, or ``None``.
        self.rate_limit: RateLimit | None = None
        self._http = http
        self._owns = owns
        self._timeout = timeout
        # A blob body that stalls outright fails within one rate window (the
        # rate itself is checked as bytes arrive, without a timer per read).
        read = timeout.read
        if limits.min_rate > 0:
            read = limits.rate_window if read is None else min(read, limits.rate_window)
        self._stream_timeout = httpx.Timeout(
            connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool
        )
        self._user_agent = user_agent
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self.auth = Authenticator(failures, credentials, home, clock, self._fetch_token)
        _redact_httpx_log()

    async def aclose(self) -> None:
        """Close the ``httpx`` client if it was made for this one."""
        if self._owns:
            await self._http.aclose()

    # -- the three doors -------------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        *,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
        follow: bool = True,
        retry: bool = True,
        streaming: bool = False,
        repository: str | None = None,
        digest: Digest | None = None,
    ) -> httpx.Response:
        """Send with auth for ``scope`` (none if ``None``), retries and redirects.

        On a 401 challenge it authenticates and tries once more. Returns a
        streaming response the caller closes; raises ``UpstreamError`` when
        no answer could be had. ``streaming``: the body is a blob, to be read
        with :meth:`stream` (no read may wait longer than a rate window).
        """
        headers = headers or {}
        timeout = self._stream_timeout if streaming else self._timeout
        with self._translating(repository, digest):
            authorization = None if scope is None else await self.auth.authorization(scope)
            response = await self._transmit(
                method, url, headers, authorization, follow, retry, timeout
            )
            if scope is None or response.status_code != 401:
                return response
            await self.oci_errors(response)  # keep the body's codes for fail()
            if not await self.auth.on_challenge(response, scope, authorization):
                return response
            await response.aclose()
            authorization = await self.auth.authorization(scope)
            return await self._transmit(method, url, headers, authorization, follow, retry, timeout)

    async def read(
        self,
        response: httpx.Response,
        cap: int,
        *,
        repository: str | None = None,
        digest: Digest | None = None,
    ) -> bytes:
        """At most ``cap`` bytes of a small body, within the deadline.

        A hostile upstream cannot make this buffer more than ``cap`` bytes
        nor take longer than what is left of the request's deadline.
        """
        parts: list[bytes] = []
        total = 0
        chunks = response.aiter_bytes()
        with self._translating(repository, digest):
            try:
                with anyio.fail_after(self._left(response)):
                    async for chunk in chunks:
                        parts.append(chunk)
                        total += len(chunk)
                        if total >= cap:
                            await abandon(response, chunks)
                            break
            except TimeoutError as exc:
                await abandon(response, chunks)
                raise self._timed_out(
                    f"body not received within {self.limits.deadline:g}s", repository, digest
                ) from exc
        return b"".join(parts)[:cap]

    async def stream(
        self, response: httpx.Response, *, repository: str, digest: Digest
    ) -> AsyncGenerator[bytes, None]:
        """The raw body (never decoded: ``Content-Encoding`` is not undone), as
        the network delivers it, no slower than the minimum rate.

        A broken transfer raises ``UpstreamError`` after every byte received
        before the break has been yielded. Closing the generator early
        releases the connection.
        """
        if response.is_stream_consumed:
            # Built from bytes already in memory (a test transport): there is
            # no wire left to read, only the content httpx holds.
            await response.aclose()
            if response.content:
                yield response.content
            return
        raw = response.aiter_raw()
        watch = _RateWatch(self.limits, anyio.current_time())
        finished = False
        try:
            while True:
                # No timer per read (a cancel scope costs more than a 64 KiB
                # read): the rate is judged as bytes arrive, and a read that
                # stalls outright ends with the request's read timeout.
                with self._translating(repository, digest):
                    try:
                        chunk = await raw.__anext__()
                    except StopAsyncIteration:
                        finished = True
                        return
                if not watch.saw(len(chunk), anyio.current_time()):
                    raise self._timed_out(watch.complaint(), repository, digest)
                yield chunk
        finally:
            if finished:
                await response.aclose()
            else:
                await abandon(response, raw)

    # -- answers ---------------------------------------------------------------

    async def oci_errors(self, response: httpx.Response) -> list[tuple[str, str]]:
        """The OCI error entries of a non-success answer's body (read once, small)."""
        if response.request.method == "HEAD":
            return []
        cached = response.extensions.get("dockerconnect.errors")
        if cached is not None:
            return list(cached)
        try:
            raw = await self.read(response, _MAX_ERROR_BODY)
        except UpstreamError:
            raw = b""
        found = parse_oci_errors(raw)
        response.extensions["dockerconnect.errors"] = found
        return found

    async def absent(self, response: httpx.Response) -> bool:
        """Whether the answer means "not there" (reads a small error body).

        A 404 from something that is not a registry (an HTML page, without
        ``Docker-Distribution-API-Version``: a wrong URL, a proxy's error
        page) is a failure, never remembered as a miss.
        """
        if response.status_code == 404:
            if _not_a_registry(response):
                raise self.failures.error(
                    f"upstream answered 404 with an HTML page and no "
                    f"Docker-Distribution-API-Version at {loggable(response.url)}: "
                    "it does not look like a registry (check the connector's URL)"
                )
            return True
        if response.status_code in (400, 410):
            return bool(ABSENT_CODES & {c for c, _ in await self.oci_errors(response)})
        return False

    async def fail(
        self, response: httpx.Response, repository: str | None, digest: Digest | None
    ) -> NoReturn:
        """Raise the typed error for a non-success answer."""
        errors = await self.oci_errors(response)
        raise self.failures.for_answer(response, errors, repository, digest)

    def link(
        self, response: httpx.Response, rel: str, *, repository: str | None = None
    ) -> httpx.URL | None:
        """The absolute URL of the answer's ``Link`` header with ``rel``, if any."""
        with self._translating(repository, None):
            try:
                found = response.links.get(rel, {}).get("url")
            except ValueError as exc:
                raise self.failures.error(
                    f"upstream sent an unreadable Link header: {exc}", repository=repository
                ) from exc
            return response.url.join(found) if found else None

    # -- machinery -------------------------------------------------------------

    @contextlib.contextmanager
    def _translating(self, repository: str | None, digest: Digest | None) -> Iterator[None]:
        try:
            yield
        except _HTTPX_ERRORS as exc:
            raise self.failures.for_exception(exc, repository, digest) from exc

    def _timed_out(
        self, what: str, repository: str | None, digest: Digest | None
    ) -> DockerConnectError:
        return self.failures.error(
            f"timed out: {what}", repository=repository, digest=digest, cls=UpstreamTimeout
        )

    def _left(self, response: httpx.Response) -> float:
        started = response.extensions.get("dockerconnect.started")
        if not isinstance(started, float):
            return self.limits.deadline
        return max(0.0, started + self.limits.deadline - anyio.current_time())

    async def _fetch_token(self, url: httpx.URL, authorization: str | None) -> bytes:
        response = await self._transmit(
            "GET", str(url), {}, authorization, True, True, self._timeout
        )
        try:
            if response.status_code != 200:
                await self.fail(response, None, None)
            return await self.read(response, _MAX_ERROR_BODY * 4)
        finally:
            await response.aclose()

    async def _transmit(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        follow: bool,
        retry: bool,
        timeout: httpx.Timeout,
    ) -> httpx.Response:
        """One logical request with retries (see :class:`Retry`)."""
        policy = self.retry if retry else Retry(attempts=1)
        deadline = self._clock() + policy.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._exchange(
                    method, url, headers, authorization, follow, timeout
                )
            except _RETRYABLE_HTTPX as exc:
                delay = policy.delay(attempt, self._rng)
                if attempt >= policy.attempts or self._clock() + delay > deadline:
                    raise
                self._log_retry(method, url, type(exc).__name__, delay)
                await self._sleep(delay)
                continue
            self._note_rate_limit(response)
            if response.status_code not in RETRY_STATUSES or attempt >= policy.attempts:
                return response
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            delay = policy.delay(attempt, self._rng) if retry_after is None else retry_after
            if delay > policy.max_retry_after or self._clock() + delay > deadline:
                return response
            self._log_retry(method, url, f"answered {response.status_code}", delay)
            await response.aclose()
            await self._sleep(delay)

    def _log_retry(self, method: str, url: str, why: str, delay: float) -> None:
        logger.info(
            "%s: %s %s failed (%s), retrying in %.2fs",
            self.failures.connector,
            method,
            loggable(url),
            why,
            delay,
        )

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        follow: bool,
        timeout: httpx.Timeout,
    ) -> httpx.Response:
        """Send once, following redirects by hand so that ``Authorization``
        goes only to the origin it was meant for; all within the deadline."""
        started = anyio.current_time()
        current = httpx.URL(url)
        home = _origin(current)
        for _ in range(_MAX_REDIRECTS + 1):
            hop = {"User-Agent": self._user_agent, **headers}
            if authorization is not None and _origin(current) == home:
                hop["Authorization"] = authorization
            request = self._http.build_request(method, current, headers=hop, timeout=timeout)
            left = max(0.0, started + self.limits.deadline - anyio.current_time())
            with anyio.move_on_after(left):
                response = await self._http.send(request, stream=True, follow_redirects=False)
                response.extensions["dockerconnect.started"] = float(started)
                logger.debug(
                    "%s: %s %s -> %d",
                    self.failures.connector,
                    method,
                    loggable(current),
                    response.status_code,
                )
                location = response.headers.get("location")
                if not follow or response.status_code not in REDIRECTS or not location:
                    return response
                await response.aclose()
                current = response.url.join(location)
                if response.status_code == 303 and method != "HEAD":
                    method = "GET"
                continue
            raise self._timed_out(f"no answer within {self.limits.deadline:g}s", None, None)
        raise self.failures.error(f"more than {_MAX_REDIRECTS} redirects")

    def _note_rate_limit(self, response: httpx.Response) -> None:
        found = RateLimit.from_headers(response.headers, time.time())
        if found is not None:
            self.rate_limit = found


class _RateWatch:
    """Whether a body keeps to ``Limits.min_rate``, window by window."""

    __slots__ = ("_got", "_limits", "_needed", "_window_end")

    def __init__(self, limits: Limits, now: float) -> None:
        self._limits = limits
        self._needed = limits.min_rate * limits.rate_window
        self._window_end = now + limits.rate_window
        self._got = 0

    def saw(self, n: int, now: float) -> bool:
        """Count ``n`` bytes received at ``now``; ``False`` if a window fell short."""
        while now >= self._window_end:
            if self._got < self._needed:
                return False
            self._got = 0
            self._window_end += self._limits.rate_window
        self._got += n
        return True

    def complaint(self) -> str:
        return (
            f"body slower than {self._limits.min_rate:g} bytes/s over {self._limits.rate_window:g}s"
        )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


async def abandon(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
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


class _RedactingFilter(logging.Filter):
    """Rewrites httpx's own ``HTTP Request: …`` lines without credentials.

    httpx logs every request's full URL at INFO: a pre-signed redirect
    target's signature, user info. This keeps the line but strips user info,
    and drops the query when it holds a secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(redacted(a) if isinstance(a, httpx.URL) else a for a in args)
        return True


def _redact_httpx_log() -> None:
    # Once per process: a filter on httpx's logger, which is process-wide anyway.
    target = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactingFilter) for f in target.filters):
        target.addFilter(_RedactingFilter())


def _not_a_registry(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "").lower()
    return "docker-distribution-api-version" not in response.headers and (
        content_type.startswith("text/html")
    )
