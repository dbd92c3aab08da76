"""The floor of the stack: a proxy that forwards every request and does nothing else.

``bench_peer.py`` runs it beside ``dockerconnect serve``, on the same Python
(the deploy venv), with the same uvicorn settings (``loop`` and ``http``
``auto``, no websockets, lifespan on, no access log), the same process
tuning (``_cli/_tuning.py``: the bounded read-ahead and one malloc arena,
loaded from its file so that no dockerconnect module is imported) and the
same HTTP client (httpx with its default limits and the connector's 256 KiB
socket reads), in front of the same upstream. It verifies nothing, stores
nothing and shares nothing between clients: every request goes to the
upstream as the client sent it (bar hop-by-hop headers) and its answer
streams back as it arrives. What it reaches is what any proxy written on
this stack can reach on this machine, so a goal above it is bound by the
stack, not by what dockerconnect does.

    PASSTHROUGH_UPSTREAM=http://127.0.0.1:5000 python -m uvicorn _passthrough:app
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Hop-by-hop headers (RFC 9110, 7.6.1), and ``host``, which names the proxy.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)

#: Answer headers uvicorn sets itself, besides the hop-by-hop ones.
NOT_FORWARDED = HOP_BY_HOP | {b"date", b"server"}

#: ``dockerconnect serve``'s process tuning, in the checkout beside this file.
TUNING = Path(__file__).resolve().parent.parent / "src" / "dockerconnect" / "_cli" / "_tuning.py"


def _tune() -> None:
    """Apply ``serve``'s tuning, read from its file (no dockerconnect import)."""
    spec = importlib.util.spec_from_file_location("_passthrough_tuning", TUNING)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load dockerconnect serve's tuning from {TUNING}")
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)
    tuning.bound_read_ahead()
    tuning.limit_malloc_arenas()


#: httpcore's socket reads, as dockerconnect's connector sets them
#: (``dockerconnect.http._client.SOCKET_READ``), without importing dockerconnect.
SOCKET_READ = 256 * 1024


def _larger_socket_reads() -> None:
    from httpcore._async.http11 import AsyncHTTP11Connection

    AsyncHTTP11Connection.READ_NUM_BYTES = max(AsyncHTTP11Connection.READ_NUM_BYTES, SOCKET_READ)


class Passthrough:
    """An ASGI app forwarding every HTTP request to one upstream, streaming both ways."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _larger_socket_reads()
                self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._client is not None, "lifespan startup did not run"
        url = self.upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        # The client's own headers, without the client's defaults added; a
        # body only when the client sent one (GET and HEAD send none).
        sent = {k for k, _ in scope["headers"]}
        has_body = b"transfer-encoding" in sent or any(
            k == b"content-length" and v.strip() != b"0" for k, v in scope["headers"]
        )
        request = httpx.Request(
            scope["method"], url, headers=headers, content=_body(receive) if has_body else None
        )
        response = await self._client.send(request, stream=True, follow_redirects=False)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in NOT_FORWARDED
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request's body as it arrives (empty for the GETs and HEADs of a pull)."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


_tune()
app = Passthrough(os.environ.get("PASSTHROUGH_UPSTREAM", "http://127.0.0.1:5000"))
