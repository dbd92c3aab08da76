"""Counters a :class:`~dockerconnect.Resolver` keeps for an embedder to export.

Every update goes through one of the small methods below, so each counter has
one meaning and one place that changes it.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from dockerconnect._events import Event, EventKind, Observer, notify

__all__ = ["LATENCY_BUCKETS", "Histogram", "ResolverStats"]

#: Upper bounds (seconds) of the upstream latency histogram's buckets: from a
#: warm local mirror (a few ms) to a dead upstream's connect timeouts.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@attrs.define(slots=True)
class Histogram:
    """Observations in fixed buckets: ``counts[i]`` fell at or below ``buckets[i]``
    (not cumulative; the last count is what fell above every bound)."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = attrs.field()
    sum: float = 0.0
    count: int = 0

    @counts.default
    def _zeros(self) -> list[int]:
        return [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)``, ending with ``inf``."""
        out, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


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
    - ``upstream_outcomes[(connector, operation, outcome)]``: requests that
      reached a connector, by how they ended (``hit``, ``miss``, ``error``);
      ``upstream_seconds[(connector, operation)]``: a :class:`Histogram` of
      how long each took to answer (wall time, not the injected clock).
    - ``prunes``, ``pruned_blobs``, ``pruned_manifests``, ``pruned_bytes``:
      what retention removed; ``cached_bytes`` what it kept at its last
      prune (``None`` before the first).

    ``observers`` (not a counter) are told of each :class:`~dockerconnect.Event`
    as it happens, stamped with ``clock``.
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
    upstream_outcomes: Counter[tuple[str, str, str]] = attrs.field(factory=Counter)
    upstream_seconds: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)
    prunes: int = 0
    pruned_blobs: int = 0
    pruned_manifests: int = 0
    pruned_bytes: int = 0
    cached_bytes: int | None = None
    observers: list[Observer] = attrs.field(factory=list, eq=False, repr=False)
    clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)

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

    def answered(self, connector: str, operation: str, outcome: str, seconds: float) -> None:
        """A request to ``connector`` ended as ``outcome`` after ``seconds``."""
        self.upstream_outcomes[(connector, operation, outcome)] += 1
        histogram = self.upstream_seconds.get((connector, operation))
        if histogram is None:
            histogram = self.upstream_seconds[(connector, operation)] = Histogram()
        histogram.observe(seconds)

    def health_changed(self, connector: str, state: str) -> None:
        """``connector`` moved into ``state``."""
        self.health_changes[(connector, state)] += 1
        self.emit("health_changed", connector=connector, detail=state)

    def emit(self, kind: EventKind, **fields: Any) -> None:
        """Tell the observers (if any) that ``kind`` happened now."""
        if self.observers:
            notify(self.observers, Event(kind, self.clock(), **fields))

    # -- reading ---------------------------------------------------------------

    def requests_to(self, connector: str, kind: str | None = None) -> int:
        """How many requests reached ``connector`` (of one ``kind``, or all)."""
        return sum(
            n
            for (name, k), n in self.upstream_requests.items()
            if name == connector and (kind is None or k == kind)
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot (tuple keys joined with ``:``).

        For labelled export use :mod:`dockerconnect.metrics.prometheus`: a
        connector's name may hold a ``:`` of its own.
        """
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            if field.name in ("observers", "clock"):
                continue
            value = getattr(self, field.name)
            if field.name == "upstream_seconds":
                out[field.name] = {
                    ":".join(k): {"sum": h.sum, "count": h.count} for k, h in value.items()
                }
            elif isinstance(value, Counter):
                out[field.name] = {
                    (":".join(k) if isinstance(k, tuple) else k): v for k, v in value.items()
                }
            else:
                out[field.name] = value
        return out
