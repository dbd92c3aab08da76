"""Turning what an upstream answered into the library's typed errors.

Every error an :class:`~dockerconnect.http.HttpConnector` raises is built by
one :class:`Failures` (so each names the connector), from one of three
things:

- an HTTP answer that is not a success: :meth:`Failures.for_answer` maps the
  status and the OCI error codes of the body to ``TooManyRequests`` (429),
  ``Unauthorized`` (401), ``Denied`` (403) or ``UpstreamError``;
- an ``httpx`` exception: :meth:`Failures.for_exception` (the client, which
  is the only code that catches them, keeps it as ``__cause__``);
- anything else the upstream got wrong: :meth:`Failures.error`.

The pure parts only: reading bodies is the client's.
"""

from __future__ import annotations

import re
import ssl
from typing import Any, TypedDict

import httpx

from dockerconnect._digest import Digest
from dockerconnect._json import load_json
from dockerconnect.errors import (
    Denied,
    DigestInvalid,
    DockerConnectError,
    TooManyRequests,
    Unauthorized,
    UpstreamError,
)
from dockerconnect.http._retry import parse_retry_after

__all__ = ["ABSENT_CODES", "Failures", "Where", "loggable", "parse_oci_errors", "redacted"]

#: OCI error codes that mean "not there" rather than "could not ask".
ABSENT_CODES = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"})

#: Query parameters that make a URL a credential (pre-signed object-storage
#: URLs, tokens passed in the query).
_SECRET_PARAM = re.compile(
    r"signature|credential|token|secret|password|passwd|key|sig|auth|session", re.IGNORECASE
)

_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def loggable(url: httpx.URL | str) -> str:
    """``url`` without user info, query or fragment: safe to log.

    Redirect targets are often pre-signed object-storage URLs whose query
    string is itself a credential, and user info is one by definition.
    """
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable URL>"


def redacted(url: httpx.URL | str) -> str:
    """``url`` without user info, and without its query if the query holds a secret."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable URL>"
    query: bytes | None = parsed.query or None
    if any(_SECRET_PARAM.search(name) for name in parsed.params):
        query = None
    return str(parsed.copy_with(username=None, password=None, query=query, fragment=None))


def parse_oci_errors(raw: bytes) -> list[tuple[str, str]]:
    """``(code, message)`` of each entry of an OCI error body; ``[]`` if it is none."""
    try:
        doc = load_json(raw)
    except ValueError:
        return []
    entries = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return []
    return [
        (str(entry.get("code", "")), str(entry.get("message", "")))
        for entry in entries
        if isinstance(entry, dict)
    ]


class Where(TypedDict):
    """What an error is about: passed on as keyword arguments."""

    repository: str
    digest: Digest | None


def _plain_http_hint(exc: httpx.ConnectError) -> str:
    """A hint for a TLS handshake that failed against what may be plain HTTP."""
    try:
        url = exc.request.url
    except RuntimeError:  # an exception raised without its request
        return ""
    if url.scheme != "https" or not _tls_failed(exc):
        return ""
    plain = loggable(url.copy_with(scheme="http", path="/", query=None))
    return f" over TLS (if the upstream speaks plain HTTP, use {plain.rstrip('/')})"


def _tls_failed(exc: BaseException) -> bool:
    """Whether a connect error came from the TLS handshake (the chain holds an SSLError)."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Failures:
    """Builds the errors of one connector, each naming it."""

    __slots__ = ("connector",)

    def __init__(self, connector: str) -> None:
        self.connector = connector

    def error(
        self,
        message: str,
        *,
        repository: str | None = None,
        digest: Digest | None = None,
        cls: type[DockerConnectError] = UpstreamError,
        **kwargs: Any,
    ) -> DockerConnectError:
        """An error of class ``cls`` (``UpstreamError`` by default) naming this connector."""
        return cls(
            message, connector=self.connector, repository=repository, digest=digest, **kwargs
        )

    def for_exception(
        self, exc: BaseException, repository: str | None, digest: Digest | None
    ) -> DockerConnectError:
        """The ``UpstreamError`` for an ``httpx`` exception."""
        if isinstance(exc, httpx.TimeoutException):
            what = "timed out"
        elif isinstance(exc, httpx.ConnectError):
            what = "could not connect" + _plain_http_hint(exc)
        elif isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            what = "connection broke"
        else:
            what = "HTTP failure"
        detail = _URL_IN_TEXT.sub(lambda m: loggable(m.group(0)), str(exc))[:300]
        return self.error(
            f"{what}: {type(exc).__name__}: {detail}", repository=repository, digest=digest
        )

    def for_answer(
        self,
        response: httpx.Response,
        errors: list[tuple[str, str]],
        repository: str | None,
        digest: Digest | None,
    ) -> DockerConnectError:
        """The typed error for a non-success answer with the OCI ``errors`` of its body."""
        codes = {c for c, _ in errors}
        status = response.status_code
        summary = "; ".join(f"{c}: {m}" if m else c for c, m in errors)
        message = f"upstream answered {status}" + (f" ({summary})" if summary else "")
        detail = [{"code": c, "message": m} for c, m in errors] or None
        if status == 429 or "TOOMANYREQUESTS" in codes:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return self.error(
                message,
                repository=repository,
                digest=digest,
                cls=TooManyRequests,
                retry_after=retry_after,
                detail=detail,
            )
        cls: type[DockerConnectError] = UpstreamError
        if status == 401 or "UNAUTHORIZED" in codes:
            cls = Unauthorized
        elif status == 403 or "DENIED" in codes:
            cls = Denied
        return self.error(message, repository=repository, digest=digest, cls=cls, detail=detail)

    def digest_header(
        self, response: httpx.Response, repository: str, digest: Digest | None
    ) -> Digest | None:
        """The ``Docker-Content-Digest`` an answer carries, if any; malformed is an error."""
        value = response.headers.get("docker-content-digest")
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestInvalid as exc:
            raise self.error(
                f"upstream sent a malformed Docker-Content-Digest {value[:100]!r}",
                repository=repository,
                digest=digest,
            ) from exc
