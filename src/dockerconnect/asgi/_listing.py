"""``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog``, paged with ``n``/``last``.

The next page is announced in a ``Link`` header (distribution-spec
"Listing Tags"), present only when the page is full.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from dockerconnect.asgi._context import Context
from dockerconnect.asgi._http import Headers, Request, Response, ascii_int, h
from dockerconnect.asgi._routing import not_allowed
from dockerconnect.errors import PaginationInvalid

__all__ = ["catalog", "paging", "tags"]


def _link(path: str, n: int, last: str) -> Headers:
    query = urlencode({"n": n, "last": last})
    return [(b"link", h(f'<{quote(path)}?{query}>; rel="next"'))]


def paging(request: Request) -> tuple[int | None, str | None]:
    """``(n, last)`` from the query; ``n`` is 1-19 ASCII digits or absent."""
    raw_n = request.param("n")
    n: int | None = None
    if raw_n is not None:
        n = ascii_int(raw_n)
        if n is None:
            shown = raw_n if len(raw_n) <= 40 else raw_n[:40] + "..."
            raise PaginationInvalid(f"n must be a non-negative integer, not {shown!r}")
    return n, request.param("last")


async def catalog(ctx: Context, request: Request, response: Response) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    n, last = paging(request)
    repositories = await ctx.registry.repositories(n=n, last=last)
    headers = _link("/v2/_catalog", n, repositories[-1]) if n and len(repositories) == n else []
    await response.json(200, {"repositories": repositories}, headers)


async def tags(ctx: Context, request: Request, response: Response, name: str) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    n, last = paging(request)
    found = await ctx.registry.tags(name, n=n, last=last)
    headers = _link(f"/v2/{name}/tags/list", n, found[-1]) if n and len(found) == n else []
    await response.json(200, {"name": name, "tags": found}, headers)
