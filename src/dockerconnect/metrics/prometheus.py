"""A Prometheus collector over a resolver's counters and connector health.

Install the ``prometheus`` extra (``prometheus-client``). Register one
collector per resolver::

    from prometheus_client import CollectorRegistry
    from dockerconnect.metrics.prometheus import ResolverCollector

    registry = CollectorRegistry()
    registry.register(ResolverCollector(resolver))

Series (the "Operating a mirror" guide lists them with what to alert on);
labels are real labels, never names joined with ``:``:

- ``dockerconnect_lookups_total{connector, outcome}`` (``hit``/``miss``)
- ``dockerconnect_upstream_requests_total{connector, operation, outcome}``
  (``hit``/``miss``/``error``)
- ``dockerconnect_upstream_request_duration_seconds{connector, operation}`` (histogram)
- ``dockerconnect_upstream_errors_total{connector}``,
  ``dockerconnect_upstream_bytes_total{connector}``,
  ``dockerconnect_upstream_stalls_total{connector}``,
  ``dockerconnect_names_dropped_total{connector}``
- ``dockerconnect_health_skips_total{connector}``,
  ``dockerconnect_health_changes_total{connector, state}``
- ``dockerconnect_connector_up{connector}``, ``dockerconnect_connector_state{connector, state}``,
  ``dockerconnect_connector_consecutive_failures{connector}`` (gauges)
- ``dockerconnect_served_bytes_total``, ``dockerconnect_<event>_total`` for the
  resolver's plain counters (``stale_serves``, ``verification_failures``, ...)
- ``dockerconnect_pruned_total{item}``, ``dockerconnect_pruned_bytes_total``,
  ``dockerconnect_prunes_total``, ``dockerconnect_cached_bytes`` (gauge, after a prune)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dockerconnect._stats import ResolverStats

__all__ = ["ResolverCollector", "health_families", "stats_families"]

PREFIX = "dockerconnect_"
_STATES = ("up", "down", "probing")
#: Plain counters exported under their own names, with their help text.
_PLAIN = {
    "joined_waiters": "Readers that joined a blob fetch already in flight.",
    "stale_serves": "Tags served past their freshness because no upstream could confirm them.",
    "negative_hits": "Lookups answered by a remembered miss, without asking.",
    "verification_failures": "Content from a connector that did not match its digest.",
    "listings_skipped": "Listings skipped because a connector cannot list.",
    "listings_cached": "Catalog requests answered from a recently fetched listing.",
    "cycles_refused": "Requests refused because a chain of registries loops.",
    "revalidations": "Stale tags revalidated with a HEAD.",
    "resumes": "Upstream transfers resumed after a break.",
    "eager_fetches": "Blobs and manifests cached in the background (eager caching).",
    "prunes": "Prunes run by retention.",
}


class ResolverCollector:
    """Collects ``registry.stats`` and ``registry.health`` at scrape time.

    ``registry`` is a :class:`~dockerconnect.Resolver` or anything with a
    ``stats`` (a :class:`~dockerconnect.ResolverStats`) and optionally a
    ``health`` mapping.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        stats = getattr(self._registry, "stats", None)
        if isinstance(stats, ResolverStats):
            yield from stats_families(stats)
        health = getattr(self._registry, "health", None)
        if isinstance(health, Mapping):
            yield from health_families(health)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: the series depend on the connectors


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, int]) -> Metric:
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for key, value in sorted(values.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(k) for k in key] if isinstance(key, tuple) else [str(key)], value)
    return family


def stats_families(stats: ResolverStats) -> Iterator[Metric]:
    """The metric families for one resolver's counters."""
    lookups = CounterMetricFamily(
        PREFIX + "lookups",
        "Manifests and blobs looked up, by where they were found (hit) or not (miss).",
        labels=["connector", "outcome"],
    )
    for counter, outcome in ((stats.hits, "hit"), (stats.misses, "miss")):
        for source, value in sorted(counter.items()):
            lookups.add_metric([source, outcome], value)
    yield lookups
    yield _counter(
        "upstream_requests",
        "Requests that reached a connector, by operation and how they ended.",
        ["connector", "operation", "outcome"],
        stats.upstream_outcomes,
    )
    duration = HistogramMetricFamily(
        PREFIX + "upstream_request_duration_seconds",
        "Time a connector took to answer a request (to its headers, for a blob).",
        labels=["connector", "operation"],
    )
    for (connector, operation), histogram in sorted(stats.upstream_seconds.items()):
        buckets = [(_bound(b), n) for b, n in histogram.cumulative()]
        duration.add_metric([connector, operation], buckets, histogram.sum)
    yield duration
    per_connector: dict[str, tuple[str, Counter[str]]] = {
        "upstream_errors": ("Requests a connector could not answer.", stats.upstream_errors),
        "upstream_bytes": ("Blob bytes received from a connector.", stats.bytes_from_upstream),
        "upstream_stalls": ("Requests abandoned for a silent connector.", stats.stalls),
        "names_dropped": ("Listed names dropped as invalid.", stats.names_dropped),
        "health_skips": ("Requests not made because the connector was down.", stats.health_skips),
    }
    for name, (doc, counter) in per_connector.items():
        yield _counter(name, doc, ["connector"], counter)
    yield _counter(
        "health_changes",
        "Moves of a connector into a health state.",
        ["connector", "state"],
        stats.health_changes,
    )
    yield CounterMetricFamily(
        PREFIX + "served_bytes", "Blob bytes handed to readers.", value=stats.bytes_served
    )
    for field, doc in _PLAIN.items():
        yield CounterMetricFamily(PREFIX + field, doc, value=getattr(stats, field))
    pruned = CounterMetricFamily(
        PREFIX + "pruned", "Cached items removed by retention.", labels=["item"]
    )
    pruned.add_metric(["blob"], stats.pruned_blobs)
    pruned.add_metric(["manifest"], stats.pruned_manifests)
    yield pruned
    yield CounterMetricFamily(
        PREFIX + "pruned_bytes", "Cached bytes freed by retention.", value=stats.pruned_bytes
    )
    if stats.cached_bytes is not None:
        yield GaugeMetricFamily(
            PREFIX + "cached_bytes",
            "Cached bytes kept at the last prune.",
            value=stats.cached_bytes,
        )


def health_families(health: Mapping[str, Any]) -> Iterator[Metric]:
    """Gauges for each connector's health (``state``, ``failures`` of each value)."""
    up = GaugeMetricFamily(
        PREFIX + "connector_up",
        "1 when a connector is up, 0 when down or probing.",
        labels=["connector"],
    )
    state = GaugeMetricFamily(
        PREFIX + "connector_state",
        "1 for the state a connector is in (up, down, probing), else 0.",
        labels=["connector", "state"],
    )
    failures = GaugeMetricFamily(
        PREFIX + "connector_consecutive_failures",
        "Failed requests in a row.",
        labels=["connector"],
    )
    for name, view in sorted(health.items()):
        current = str(getattr(view, "state", view))
        up.add_metric([str(name)], 1.0 if current == "up" else 0.0)
        for s in _STATES:
            state.add_metric([str(name), s], 1.0 if current == s else 0.0)
        failures.add_metric([str(name)], float(getattr(view, "failures", 0)))
    yield up
    yield state
    yield failures


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
