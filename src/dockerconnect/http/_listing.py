"""Paginated listings: tags (``/v2/<name>/tags/list``) and the catalog.

distribution-spec "Listing Tags": the ``Link`` header carries the next page
as ``<url>; rel="next"``. An upstream chooses how many pages there are, so
one listing is bounded in pages, names and bytes (:class:`ListingBounds`);
past a bound it fails with :class:`~dockerconnect.errors.ListingTooLarge`
rather than holding whatever the upstream sends.
"""

from __future__ import annotations

import attrs
import httpx

from dockerconnect._json import load_json
from dockerconnect._manifest import base_media_type
from dockerconnect.errors import InvalidInput, ListingTooLarge
from dockerconnect.http._client import Client
from dockerconnect.http._errors import loggable

__all__ = ["ListingBounds", "Lister"]

_HTML = frozenset({"text/html", "application/xhtml+xml"})


@attrs.frozen(slots=True)
class ListingBounds:
    """The most one listing may take: pages, names, and body bytes in all."""

    max_pages: int = 1000
    max_names: int = 100_000
    max_bytes: int = 16 * 1024 * 1024
    page_size: int = 1000

    def __attrs_post_init__(self) -> None:
        if min(self.max_pages, self.max_names, self.max_bytes, self.page_size) < 1:
            raise InvalidInput("ListingBounds: every bound must be at least 1")


class Lister:
    """Reads every page of a listing through one :class:`Client`."""

    def __init__(
        self, client: Client, origin: tuple[str, str, int | None], bounds: ListingBounds
    ) -> None:
        self._client = client
        self._origin = origin
        self.bounds = bounds

    async def names(
        self, url: str, scope: str, key: str, repository: str | None, *, missing: list[str] | None
    ) -> list[str] | None:
        """Every name of a paginated listing; ``None`` if it cannot be listed
        (405 or ``UNSUPPORTED``), ``missing`` if the first page says the
        repository is unknown (404, ``NAME_UNKNOWN``)."""
        names: list[str] = []
        seen: set[str] = set()
        budget = self.bounds.max_bytes
        next_url: str | None = url
        while next_url is not None:
            if next_url in seen:
                raise self._client.failures.error(
                    "upstream's listing pagination loops", repository=repository
                )
            if len(seen) >= self.bounds.max_pages:
                raise self._too_large(f"more than {self.bounds.max_pages} pages", repository)
            seen.add(next_url)
            page = await self._page(next_url, scope, repository, budget, first=len(seen) == 1)
            if page is None:
                return None
            if isinstance(page, _Missing):
                return missing
            raw, response = page
            budget -= len(raw)
            names.extend(self._parse(raw, key, repository))
            if len(names) > self.bounds.max_names:
                raise self._too_large(f"more than {self.bounds.max_names} names", repository)
            next_url = self._next_page(response, repository)
        return names

    async def _page(
        self, url: str, scope: str, repository: str | None, budget: int, *, first: bool
    ) -> tuple[bytes, httpx.Response] | _Missing | None:
        client = self._client
        response = await client.send(
            "GET", url, scope=scope, headers={"Accept": "application/json"}, repository=repository
        )
        try:
            if base_media_type(response.headers.get("content-type", "")) in _HTML:
                raise client.failures.error(
                    f"upstream answered {response.status_code} with an HTML page "
                    "instead of a listing",
                    repository=repository,
                )
            if response.status_code != 200:
                errors = {c for c, _ in await client.oci_errors(response)}
                if first and (response.status_code == 404 or "NAME_UNKNOWN" in errors):
                    return _Missing()
                if response.status_code == 405 or "UNSUPPORTED" in errors:
                    return None
                await client.fail(response, repository, None)
            raw = await client.read(response, budget + 1, repository=repository)
        finally:
            await response.aclose()
        if len(raw) > budget:
            raise self._too_large(f"more than {self.bounds.max_bytes} bytes", repository)
        return raw, response

    def _parse(self, raw: bytes, key: str, repository: str | None) -> list[str]:
        failures = self._client.failures
        try:
            doc = load_json(raw)
        except ValueError as exc:
            raise failures.error(
                f"upstream sent a {key} listing that is not JSON: {exc}", repository=repository
            ) from exc
        values = doc.get(key) if isinstance(doc, dict) else None
        if values is None:
            return []  # distribution sends "tags": null for a repository without tags
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise failures.error(
                f"upstream's {key} listing is not a list of strings", repository=repository
            )
        return values

    def _next_page(self, response: httpx.Response, repository: str | None) -> str | None:
        failures = self._client.failures
        target = self._client.link(response, "next", repository=repository)
        if target is None:
            return None
        if (target.scheme, target.host, target.port) != self._origin:
            raise failures.error(
                f"upstream's next page is on another host ({loggable(target)})",
                repository=repository,
            )
        return str(target)

    def _too_large(self, what: str, repository: str | None) -> ListingTooLarge:
        error = self._client.failures.error(
            f"upstream's listing is too large: {what}", repository=repository, cls=ListingTooLarge
        )
        assert isinstance(error, ListingTooLarge)
        return error


class _Missing:
    """The first page said the repository is not there."""

    __slots__ = ()
