"""OpenTelemetry metrics over a resolver's counters and connector health.

Install the ``otel`` extra (``opentelemetry-api``; an SDK or exporter of
your choice does the exporting)::

    from opentelemetry import metrics
    from dockerconnect.metrics.otel import instrument

    instrument(resolver, metrics.get_meter("dockerconnect"))

Every instrument is *observable*: it reads ``resolver.stats`` and
``resolver.health`` when the SDK collects, so the resolver's hot paths pay
nothing. Names follow the OpenTelemetry conventions (dotted, unit apart):

- ``dockerconnect.lookups`` {connector, outcome}
- ``dockerconnect.upstream.requests`` {connector, operation, outcome}
- ``dockerconnect.upstream.request.duration`` (unit ``s``) and
  ``dockerconnect.upstream.request.count`` {connector, operation}: the sum
  of the latencies and their count (OpenTelemetry has no observable
  histogram; Prometheus users get the buckets from
  :mod:`dockerconnect.metrics.prometheus`)
- ``dockerconnect.upstream.errors``, ``dockerconnect.upstream.bytes`` (``By``),
  ``dockerconnect.health.skips`` {connector}
- ``dockerconnect.connector.up`` {connector} (gauge: 1 up, 0 otherwise)
- ``dockerconnect.served.bytes`` (``By``), ``dockerconnect.stale_serves``,
  ``dockerconnect.verification_failures``, ``dockerconnect.pruned`` {item},
  ``dockerconnect.pruned.bytes`` (``By``), ``dockerconnect.cached.bytes`` (gauge)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from dockerconnect._stats import ResolverStats

__all__ = ["instrument"]

_Read = Callable[[ResolverStats], Iterable[tuple[float, Mapping[str, str]]]]


def _labelled(counter: Mapping[Any, int], *labels: str) -> Iterable[tuple[float, dict[str, str]]]:
    for key, value in counter.items():
        parts = key if isinstance(key, tuple) else (key,)
        yield float(value), dict(zip(labels, (str(p) for p in parts), strict=True))


def _lookups(stats: ResolverStats) -> Iterable[tuple[float, dict[str, str]]]:
    for source, n in stats.hits.items():
        yield float(n), {"connector": source, "outcome": "hit"}
    for source, n in stats.misses.items():
        yield float(n), {"connector": source, "outcome": "miss"}


_COUNTERS: dict[str, tuple[str, str, _Read]] = {
    "dockerconnect.lookups": ("1", "Lookups by where found (hit) or not (miss).", _lookups),
    "dockerconnect.upstream.requests": (
        "1",
        "Requests that reached a connector, by how they ended.",
        lambda s: _labelled(s.upstream_outcomes, "connector", "operation", "outcome"),
    ),
    "dockerconnect.upstream.request.duration": (
        "s",
        "Sum of the time connectors took to answer.",
        lambda s: (
            (h.sum, {"connector": c, "operation": o}) for (c, o), h in s.upstream_seconds.items()
        ),
    ),
    "dockerconnect.upstream.request.count": (
        "1",
        "Requests timed in dockerconnect.upstream.request.duration.",
        lambda s: (
            (float(h.count), {"connector": c, "operation": o})
            for (c, o), h in s.upstream_seconds.items()
        ),
    ),
    "dockerconnect.upstream.errors": (
        "1",
        "Requests a connector could not answer.",
        lambda s: _labelled(s.upstream_errors, "connector"),
    ),
    "dockerconnect.upstream.bytes": (
        "By",
        "Blob bytes received from connectors.",
        lambda s: _labelled(s.bytes_from_upstream, "connector"),
    ),
    "dockerconnect.health.skips": (
        "1",
        "Requests not made because the connector was down.",
        lambda s: _labelled(s.health_skips, "connector"),
    ),
    "dockerconnect.served.bytes": (
        "By",
        "Blob bytes handed to readers.",
        lambda s: [(float(s.bytes_served), {})],
    ),
    "dockerconnect.stale_serves": (
        "1",
        "Tags served stale because no upstream could confirm them.",
        lambda s: [(float(s.stale_serves), {})],
    ),
    "dockerconnect.verification_failures": (
        "1",
        "Content from a connector that did not match its digest.",
        lambda s: [(float(s.verification_failures), {})],
    ),
    "dockerconnect.pruned": (
        "1",
        "Cached items removed by retention.",
        lambda s: [
            (float(s.pruned_blobs), {"item": "blob"}),
            (float(s.pruned_manifests), {"item": "manifest"}),
        ],
    ),
    "dockerconnect.pruned.bytes": (
        "By",
        "Cached bytes freed by retention.",
        lambda s: [(float(s.pruned_bytes), {})],
    ),
}


def instrument(resolver: Any, meter: Meter) -> None:
    """Register observable instruments on ``meter`` for ``resolver``.

    ``resolver`` is a :class:`~dockerconnect.Resolver` (or anything with a
    ``stats`` :class:`~dockerconnect.ResolverStats` and a ``health`` mapping).
    """
    stats = resolver.stats
    if not isinstance(stats, ResolverStats):
        raise TypeError(f"{resolver!r} has no ResolverStats to instrument")

    def observe(read: _Read) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, dict(attributes)) for value, attributes in read(stats)]

        return callback

    for name, (unit, description, read) in _COUNTERS.items():
        meter.create_observable_counter(
            name, callbacks=[observe(read)], unit=unit, description=description
        )

    def up(options: CallbackOptions) -> Iterable[Observation]:
        health = getattr(resolver, "health", None) or {}
        return [
            Observation(1 if getattr(view, "state", view) == "up" else 0, {"connector": name})
            for name, view in health.items()
        ]

    def cached(options: CallbackOptions) -> Iterable[Observation]:
        return [] if stats.cached_bytes is None else [Observation(stats.cached_bytes)]

    meter.create_observable_gauge(
        "dockerconnect.connector.up", callbacks=[up], unit="1", description="1 when up."
    )
    meter.create_observable_gauge(
        "dockerconnect.cached.bytes",
        callbacks=[cached],
        unit="By",
        description="Cached bytes kept at the last prune.",
    )
