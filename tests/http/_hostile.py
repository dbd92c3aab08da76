"""A hostile registry on 127.0.0.1: real sockets, bytes trickled or piled on.

Runs inside the caller's event loop (anyio, so asyncio and trio alike) or,
for measurements, as its own process (``python _hostile.py MODE``, printing
its URL). Each connection serves one request and is closed. Behaviours:

- ``trickle_headers``: the status line and headers, one byte per ``interval``;
- ``trickle_body``: headers (and the body's first ``fast`` bytes) at once,
  then the rest ``step`` bytes per ``interval``;
- ``pages``: a tag listing whose every page holds ``page_bytes`` of names
  and links to a fresh next page, without end (or until ``last_page``);
- ``gzip_blob``: a blob served with ``Content-Encoding: gzip`` (its bytes are
  already a gzip stream, as a layer is), optionally cut short once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


class Hostile:
    """The server's script: what to answer, and what it was asked."""

    def __init__(
        self,
        mode: str,
        *,
        body: bytes = b"{}",
        content_type: str = "application/octet-stream",
        interval: float = 0.05,
        step: int = 1,
        page_bytes: int = 4 * 1024 * 1024,
        cut_once: int | None = None,
        last_page: int | None = None,
        fast: int = 0,
    ) -> None:
        self.mode = mode
        self.body = body
        self.content_type = content_type
        self.interval = interval
        self.step = step
        self.page_bytes = page_bytes
        self.cut_once = cut_once
        self.last_page = last_page
        self.fast = fast
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.pages_served = 0
        self.url = ""

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        try:
            async with stream:
                head = await _read_head(stream)
                if head is None:
                    return
                method, target, headers = head
                self.requests.append((method, target, headers))
                await self._answer(stream, method, target, headers)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client gave up: that is the point

    async def _answer(
        self, stream: anyio.abc.ByteStream, method: str, target: str, headers: dict[str, str]
    ) -> None:
        if target.startswith("/v2/") and target.rstrip("/") == "/v2":
            await stream.send(_response(200, b"{}", "application/json"))
        elif self.mode == "trickle_headers":
            for i in range(len(whole := _response(200, self.body, self.content_type))):
                await stream.send(whole[i : i + 1])
                await anyio.sleep(self.interval)
        elif self.mode == "trickle_body":
            whole = _response(200, self.body, self.content_type)
            split = whole.index(b"\r\n\r\n") + 4 + self.fast
            await stream.send(whole[:split])
            for i in range(split, len(whole), self.step):
                await anyio.sleep(self.interval)
                await stream.send(whole[i : i + self.step])
        elif self.mode == "pages":
            await stream.send(self._page(target))
        elif self.mode == "gzip_blob":
            await self._gzip_blob(stream, method, headers)

    def _page(self, target: str) -> bytes:
        self.pages_served += 1
        # The page number comes from the request, so one server serves many listings.
        _, _, last = target.partition("last=t")
        n = int(last[:6]) + 1 if last[:6].isdigit() else 1
        # Names of 40 bytes each ("t<page>-<i>" padded), enough to fill the page.
        count = self.page_bytes // 44
        tags = [f"t{n:06d}-{i:08d}".ljust(40, "x") for i in range(count)]
        body = json.dumps({"name": "hostile/app", "tags": tags}).encode()
        link = f'</v2/hostile/app/tags/list?n=1000&last=t{n:06d}>; rel="next"'
        if self.last_page is not None and n >= self.last_page:
            return _response(200, body, "application/json")
        return _response(200, body, "application/json", {"Link": link})

    async def _gzip_blob(
        self, stream: anyio.abc.ByteStream, method: str, headers: dict[str, str]
    ) -> None:
        data, extra = self.body, {"Content-Encoding": "gzip"}
        start = 0
        status = 200
        if headers.get("range", "").startswith("bytes="):
            start = int(headers["range"][6:].split("-")[0])
            status = 206
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        whole = _response(status, part, self.content_type, extra, length=len(part))
        if method == "HEAD":
            whole = whole[: whole.index(b"\r\n\r\n") + 4]
        elif self.cut_once is not None:
            whole, self.cut_once = whole[: whole.index(b"\r\n\r\n") + 4 + self.cut_once], None
        await stream.send(whole)


async def _read_head(stream: anyio.abc.ByteStream) -> tuple[str, str, dict[str, str]] | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = await stream.receive(65536)
        except anyio.EndOfStream:
            return None
        buffer += chunk
        if len(buffer) > 65536:
            return None
    lines = buffer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def _response(
    status: int,
    body: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
    *,
    length: int | None = None,
) -> bytes:
    reason = {200: "OK", 206: "Partial Content"}.get(status, "Status")
    fields = {
        "Content-Type": content_type,
        "Content-Length": str(len(body) if length is None else length),
        "Connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


@asynccontextmanager
async def serving(hostile: Hostile) -> AsyncIterator[Hostile]:
    """Serve ``hostile`` on 127.0.0.1 for the duration of the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    hostile.url = f"http://127.0.0.1:{port}"
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, hostile.handle)
            try:
                yield hostile
            finally:
                group.cancel_scope.cancel()
    finally:
        await listener.aclose()


async def _main(mode: str, options: list[str]) -> None:
    """``MODE [name=value ...]``: the options are :class:`Hostile`'s int ones."""
    kwargs = {name: int(value) for name, _, value in (o.partition("=") for o in options)}
    async with serving(Hostile(mode, **kwargs)) as hostile:  # type: ignore[arg-type]
        print(hostile.url, flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(_main, sys.argv[1], sys.argv[2:])
