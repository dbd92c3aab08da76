"""Tag and catalog listing: local and connector answers merged, sorted, paged.

A connector that cannot list is skipped (logged, counted). One that could
not be asked is skipped too, unless nobody else answered: then the listing
is an ``UpstreamError``, not "not found" or an empty catalog ("could not
ask" is never reported as "not there"). Names a connector lists that the
distribution-spec grammar does not allow are dropped, logged and counted:
they are never served. A connector's catalog is reused for
``CachingPolicy.listing_ttl`` seconds, so paging through a merged catalog
asks each connector once rather than once per page.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from dockerconnect._protocols import Connector, ManifestStore
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.sources import Nobody
from dockerconnect.errors import InvalidInput, NameUnknown, PaginationInvalid, UpstreamError

__all__ = ["Listing", "check_paging", "page"]

log = logging.getLogger("dockerconnect.resolver")


def check_paging(n: int | None, last: str | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise PaginationInvalid(f"n must be a non-negative integer, not {n!r}")
    if last is not None and not isinstance(last, str):
        raise PaginationInvalid("last must be a string")


def page(items: set[str], n: int | None, last: str | None) -> list[str]:
    """``items`` in lexical order, after ``last`` (exclusive), at most ``n``."""
    ordered = sorted(items)
    if last is not None:
        ordered = [item for item in ordered if item > last]
    if n is not None:
        ordered = ordered[:n]
    return ordered


class Listing:
    """Merged listings over the resolver's store and connectors."""

    def __init__(
        self, context: Context, *, store: ManifestStore, connectors: Callable[[], list[Connector]]
    ) -> None:
        self._ctx = context
        self.owner = context.owner
        self.store = store
        self._connectors = connectors
        #: Each connector's catalog and until when it is reused, by connector name.
        self._catalogs: dict[str, tuple[float, list[str]]] = {}

    async def tags(self, repository: str, n: int | None, last: str | None) -> list[str]:
        local = await self.store.tags(repository)
        merged = set(local or [])
        known = local is not None
        failures: dict[str, BaseException] = {}
        for connector in self._ctx.sources.serving(repository):
            listed = await self._ask(
                connector, "tags", f"tags of {repository}", failures,
                functools.partial(connector.tags, repository),
            )  # fmt: skip
            if listed is None:
                continue
            known = known or bool(listed)
            merged.update(self._valid(connector, listed, validate_tag, "tag"))
        if not known:
            raise Nobody(self.owner, failures).error(
                NameUnknown, f"repository {repository!r}", repository=repository
            )
        return page(merged, n, last)

    async def repositories(self, n: int | None, last: str | None) -> list[str]:
        merged = set(await self.store.repositories())
        failures: dict[str, BaseException] = {}
        answered = False
        for connector in list(self._connectors()):
            listed = await self._catalog(connector, failures)
            if listed is None:
                continue
            answered = True
            merged.update(r for r in listed if _serves(connector, r))
        if not merged and not answered and Nobody(self.owner, failures).real_failures:
            raise Nobody(self.owner, failures).error(NameUnknown, "the catalog")
        return page(merged, n, last)

    async def _catalog(
        self, connector: Connector, failures: dict[str, BaseException]
    ) -> list[str] | None:
        now = self._ctx.clock()
        held = self._catalogs.get(connector.name)
        if held is not None and now < held[0]:
            self._ctx.stats.listings_cached += 1
            return held[1]
        listed = await self._ask(connector, "repositories", "the catalog", failures,
                                 connector.repositories)  # fmt: skip
        if listed is None:
            return None
        names = self._valid(connector, listed, validate_repository, "repository")
        expiry = self._ctx.policy_for(connector.name).listing_expiry(now)
        if expiry is not None:
            self._catalogs[connector.name] = (expiry, names)
        return names

    async def _ask(
        self,
        connector: Connector,
        request: str,
        what: str,
        failures: dict[str, BaseException],
        fn: Callable[[], Awaitable[list[str] | None]],
    ) -> list[str] | None:
        """One connector's listing; ``None`` (skipped, logged, counted) if it has none."""
        try:
            listed: object = await self._ctx.sources.call(connector, request, what, fn)
            if listed is not None and not isinstance(listed, list):
                raise UpstreamError(
                    f"connector {connector.name!r} listed a {type(listed).__name__}, not a list",
                    connector=connector.name,
                )
        except Exception as exc:
            failures[connector.name] = self._ctx.sources.failed(connector, exc, what)
            self._skip(connector, "could not be asked")
            return None
        if listed is None:
            self._skip(connector, "cannot list" if request == "tags" else "has no catalog")
        return listed

    def _valid(
        self, connector: Connector, names: list[str], validate: Callable[[str], str], kind: str
    ) -> list[str]:
        """The names the spec's grammar allows; the others are logged and counted."""
        out: list[str] = []
        for name in names:
            try:
                if not isinstance(name, str):
                    raise InvalidInput(f"not a string: {type(name).__name__}")
                out.append(validate(name))
            except InvalidInput as exc:
                self._ctx.stats.names_dropped[connector.name] += 1
                log.warning("connector %r listed an invalid %s name: %s", connector.name, kind, exc)
        return out

    def _skip(self, connector: Connector, why: str) -> None:
        self._ctx.stats.listings_skipped += 1
        log.info("listing skipped connector %r: it %s", connector.name, why)


def _serves(connector: Connector, repository: str) -> bool:
    try:
        return connector.serves(repository)
    except Exception:
        return False
