"""The request and response layer: ASGI messages in, ASGI messages out.

Nothing here knows the registry; the route modules read a :class:`Request`
and answer through a :class:`Response`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs

from dockerconnect.asgi._errors import ClientGone, ManifestTooLarge, error_body

__all__ = [
    "Headers",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "ascii_int",
    "h",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
#: distribution sends the API version on every response; clients probe any of them.
_API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
#: Numbers in headers and queries: ASCII digits only, at most 19 of them
#: (below 2**63), so ``int()`` never meets Python's 4,300-digit limit and
#: ``"²"`` (for which ``str.isdigit()`` is true) is no number.
_ASCII_INT = re.compile(r"[0-9]{1,19}")


def ascii_int(value: str) -> int | None:
    """``value`` as a non-negative int, or None if it is not 1-19 ASCII digits."""
    return int(value) if _ASCII_INT.fullmatch(value) else None


def h(value: object) -> bytes:
    """A header value from any object."""
    return str(value).encode("latin-1")


class Request:
    """One HTTP request: method, path, query, headers, and its body as a stream."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self._query: dict[str, list[str]] | None = None
        headers = scope.get("headers", ())
        # Read more than once: a list as servers send it, else copied into one.
        self._headers: Sequence[tuple[bytes, bytes]] = (
            headers if isinstance(headers, (list, tuple)) else list(headers)
        )
        self._receive = receive
        self._body_done = False
        #: Who made the request, once an authenticator said so.
        self.identity: Any = None
        #: The route it took, once known (for the access log and metrics).
        self.route = "unknown"

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

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters, parsed when first asked for (a pull has none)."""
        if self._query is None:
            self._query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        return self._query

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        return None if value is None else ascii_int(value.strip())

    async def body(self) -> AsyncGenerator[bytes, None]:
        """The request body as it arrives; ``ClientGone`` if the client leaves."""
        while not self._body_done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._body_done = True
                raise ClientGone
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


class Response:
    """The sending side of one request; remembers whether (and how) it started."""

    def __init__(self, send: Send, *, head: bool) -> None:
        self._send = send
        self.head = head
        self.started = False
        self.status = 0
        self.sent_bytes = 0

    async def start(self, status: int, headers: Headers) -> None:
        await self._start(status, [*headers, _API_VERSION])

    async def _start(self, status: int, headers: Headers) -> None:
        """Start the response with ``headers``, which end with the API version."""
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool = False) -> None:
        self.sent_bytes += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def pathsend(self, path: str, length: int) -> None:
        self.sent_bytes += length
        await self._send({"type": "http.response.pathsend", "path": path})

    async def headers_only(self, status: int, headers: Headers) -> None:
        """The answer to a HEAD: ``headers`` (with the GET's ``Content-Length``), no body."""
        await self.start(status, headers)
        await self.body(b"")

    async def simple(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """A complete response; a HEAD gets the headers (``Content-Length`` kept) only."""
        await self._start(status, [*headers, (b"content-length", b"%d" % len(body)), _API_VERSION])
        await self.body(b"" if self.head else body)

    async def json(self, status: int, document: Any, headers: Headers | None = None) -> None:
        data = json.dumps(document).encode()
        await self.simple(status, [(b"content-type", JSON), *(headers or [])], data)

    async def error(self, status: int, entry: dict[str, Any], headers: Headers) -> None:
        """An OCI error body (``{"errors": [entry]}``) with ``status``."""
        await self.json(status, error_body(entry), headers)
