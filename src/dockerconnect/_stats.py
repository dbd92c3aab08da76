"""Counters a :class:`~dockerconnect.Resolver` keeps for an embedder to export."""

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
      ``open_blob``, ``tags``, ``repositories``.
    - ``upstream_errors[connector]``: requests a connector could not answer.
    - ``bytes_from_upstream[connector]`` and ``bytes_served``.
    - ``joined_waiters``: readers that joined a blob fetch already in flight.
    - ``stale_serves``, ``negative_hits``, ``verification_failures``,
      ``listings_skipped``, ``cycles_refused``, ``revalidations``,
      ``resumes`` (upstream transfers resumed after a break),
      ``eager_fetches`` (blobs and manifests cached in the background).
    """

    hits: Counter[str] = attrs.field(factory=Counter)
    misses: Counter[str] = attrs.field(factory=Counter)
    upstream_requests: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    upstream_errors: Counter[str] = attrs.field(factory=Counter)
    bytes_from_upstream: Counter[str] = attrs.field(factory=Counter)
    bytes_served: int = 0
    joined_waiters: int = 0
    stale_serves: int = 0
    negative_hits: int = 0
    verification_failures: int = 0
    listings_skipped: int = 0
    cycles_refused: int = 0
    revalidations: int = 0
    resumes: int = 0
    eager_fetches: int = 0

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
