"""Counters a :class:`~dockerconnect.Resolver` keeps for an embedder to export.

Every update goes through one of the small methods below, so each counter has
one meaning and one place that changes it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

__all__ = ["ResolverStats"]


@attrs.define(slots=True)
class ResolverStats:
    """Counters since the resolver was made. Plain ints and ``Counter``s.

    - ``hits[source]``: items served, by where they came from (the registry's
      own name or a connector's name); ``misses[source]``: "not there" answers.
    - ``upstream_requests[(connector, kind)]``: requests made to connectors,
      ``kind`` one of ``get_manifest``, ``head_manifest``, ``stat_blob``,
      ``open_blob``, ``tags``, ``repositories``, ``referrers`` (a tag-schema
      lookup of referrers is a ``get_manifest``).
    - ``upstream_errors[connector]``: requests a connector could not answer.
    - ``bytes_from_upstream[connector]`` and ``bytes_served``.
    - ``joined_waiters``: readers that joined a blob fetch already in flight.
    - ``stale_serves``, ``negative_hits``, ``verification_failures``,
      ``listings_skipped``, ``cycles_refused``, ``revalidations``,
      ``resumes`` (upstream transfers resumed after a break),
      ``eager_fetches`` (blobs and manifests cached in the background).
    - ``stalls[connector]``: requests or transfers abandoned because the
      connector stopped answering for longer than the resolver's stall limit.
    - ``names_dropped[connector]``: tag or repository names a connector listed
      that the distribution-spec grammar does not allow (never served).
    - ``health_skips[connector]``: requests not made because the connector
      was down; ``health_changes[(connector, state)]``: moves into ``state``
      (``up``, ``down``, ``probing``).
    - ``listings_cached``: catalog requests answered from a connector's
      recently fetched listing instead of asking it again.
    - ``referrers_cached``: connector referrers answers served from the
      resolver's memory within ``referrers_ttl`` instead of asking again.
    """

    hits: Counter[str] = attrs.field(factory=Counter)
    misses: Counter[str] = attrs.field(factory=Counter)
    upstream_requests: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    upstream_errors: Counter[str] = attrs.field(factory=Counter)
    bytes_from_upstream: Counter[str] = attrs.field(factory=Counter)
    stalls: Counter[str] = attrs.field(factory=Counter)
    names_dropped: Counter[str] = attrs.field(factory=Counter)
    health_skips: Counter[str] = attrs.field(factory=Counter)
    health_changes: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    bytes_served: int = 0
    joined_waiters: int = 0
    stale_serves: int = 0
    negative_hits: int = 0
    verification_failures: int = 0
    listings_skipped: int = 0
    listings_cached: int = 0
    cycles_refused: int = 0
    revalidations: int = 0
    resumes: int = 0
    eager_fetches: int = 0
    referrers_cached: int = 0

    # -- updates ---------------------------------------------------------------

    def hit(self, source: str) -> None:
        """An item was found at ``source`` (this registry or a connector)."""
        self.hits[source] += 1

    def miss(self, connector: str) -> None:
        """``connector`` answered "not there"."""
        self.misses[connector] += 1

    def request(self, connector: str, kind: str) -> None:
        """A request of ``kind`` is about to reach ``connector``."""
        self.upstream_requests[(connector, kind)] += 1

    def failure(self, connector: str, *, wrong_bytes: bool = False) -> None:
        """``connector`` could not be asked (or sent bytes that fail verification)."""
        self.upstream_errors[connector] += 1
        if wrong_bytes:
            self.verification_failures += 1

    def received(self, connector: str, n: int) -> None:
        """``n`` bytes arrived from ``connector``."""
        self.bytes_from_upstream[connector] += n

    def served(self, n: int) -> None:
        """``n`` bytes were handed to a reader."""
        self.bytes_served += n

    # -- reading ---------------------------------------------------------------

    def requests_to(self, connector: str, kind: str | None = None) -> int:
        """How many requests reached ``connector`` (of one ``kind``, or all)."""
        return sum(
            n
            for (name, k), n in self.upstream_requests.items()
            if name == connector and (kind is None or k == kind)
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot (tuple keys joined with ``:``)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, Counter):
                out[field.name] = {
                    (":".join(k) if isinstance(k, tuple) else k): v for k, v in value.items()
                }
            else:
                out[field.name] = value
        return out
