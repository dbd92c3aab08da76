"""The generic translation from a registry's ``stats`` to Prometheus metrics.

A :class:`~dockerconnect.Resolver`'s own counters are exported by
:mod:`dockerconnect.metrics.prometheus` (labelled families, latency
histograms); this covers any other ``Registry`` whose ``stats`` is a plain
object of ``Counter`` and int fields.

Kept apart, and small, because the resolver's counters change shape over
time: this is the only code that knows them. Labels are real labels
(``connector``, ``operation``, ``outcome``), never names joined with ``:``
(``127.0.0.1:5101:get_manifest`` is ambiguous: the connector's name has a
colon of its own).

- ``hits[source]``/``misses[source]`` → ``dockerconnect_lookups_total{connector, outcome}``
- ``upstream_requests[(connector, kind)]`` →
  ``dockerconnect_upstream_requests_total{connector, operation}``
- ``upstream_errors[connector]`` → ``dockerconnect_upstream_requests_failed_total{connector}``
- any other ``Counter`` keyed by a name → ``dockerconnect_<field>_total{connector}``
- any other ``Counter`` keyed by a pair → ``dockerconnect_<field>_total{connector, operation}``
- an int field → ``dockerconnect_<field>_total``
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

__all__ = ["stats_metrics"]

_PREFIX = "dockerconnect_"


def _fields(stats: Any) -> dict[str, Any]:
    fields = getattr(type(stats), "__attrs_attrs__", None)
    if fields is not None:
        return {f.name: getattr(stats, f.name) for f in fields}
    return dict(vars(stats))


def stats_metrics(stats: Any) -> Iterator[Metric]:
    """Prometheus metric families for one registry's ``stats`` object."""
    fields = _fields(stats)
    lookups = CounterMetricFamily(
        _PREFIX + "lookups",
        "Manifests and blobs looked up, by where they were found (hit) or not (miss).",
        labels=["connector", "outcome"],
    )
    for field, outcome in (("hits", "hit"), ("misses", "miss")):
        for source, value in (fields.pop(field, None) or {}).items():
            lookups.add_metric([str(source), outcome], value)
    yield lookups
    renamed = {
        "upstream_errors": "upstream_requests_failed",
        "bytes_from_upstream": "upstream_bytes",
    }
    for field, value in sorted(fields.items()):
        name = _PREFIX + renamed.get(field, field)
        doc = f"The registry's {field.replace('_', ' ')} counter."
        if isinstance(value, Counter):
            pairs = any(isinstance(k, tuple) for k in value)
            labels = ["connector", "operation"] if pairs else ["connector"]
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, count in sorted(value.items(), key=lambda kv: str(kv[0])):
                family.add_metric([str(k) for k in key] if pairs else [str(key)], count)
            yield family
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield CounterMetricFamily(name, doc, value=value)
