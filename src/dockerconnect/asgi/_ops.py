"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` and the access log.

- ``GET /healthz``: 200 while the process serves requests.
- ``GET /readyz``: 200 when the store is writable (a file is created and
  removed in the upload directory) and not every connector is *down*, else 503;
  the body lists each check. Connector states come from the registry's
  ``health`` mapping (name → object with ``.state``) when it has one.
- ``GET /metrics``: Prometheus text format, from this application's own
  ``CollectorRegistry`` (two apps in one process never share metrics):
  ``dockerconnect_http_requests_total{method, route, status}``,
  ``dockerconnect_http_request_duration_seconds{route}``,
  ``dockerconnect_http_response_bytes_total{route}``,
  and, for a :class:`~dockerconnect.Resolver`, the series of
  :mod:`dockerconnect.metrics.prometheus` (counters, upstream latency
  histograms, connector health); any other registry's ``stats`` through
  ``_stats_metrics``. Requests are counted in plain counters, and
  ``prometheus_client`` is imported at the first scrape: a server nobody
  scrapes does not hold it in memory.

Loggers: ``dockerconnect.asgi`` (errors, start-up), ``dockerconnect.asgi.access``
(one INFO line per request).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import attrs

from dockerconnect._stats import ResolverStats
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._http import Request, Response
from dockerconnect.asgi._routing import not_allowed

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["ServerMetrics", "access_log", "healthz", "metrics", "readyz"]

access = logging.getLogger("dockerconnect.asgi.access")

_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
#: The methods counted by name in ``dockerconnect_http_requests``.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
#: Upper bounds of the request-duration histogram's buckets, in seconds
#: (``prometheus_client``'s defaults); a last one, ``+Inf``, is implied.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _RegistryCollector:
    """Collects the registry's ``stats`` and connector health at scrape time.

    A :class:`~dockerconnect.Resolver`'s counters go through
    :class:`dockerconnect.metrics.prometheus.ResolverCollector`; any other
    registry's ``stats`` through the generic translation in ``_stats_metrics``.
    Built at the first scrape, when ``prometheus_client`` is imported.
    """

    def __init__(self, registry: Any) -> None:
        from dockerconnect.metrics.prometheus import ResolverCollector

        self._registry = registry
        self._resolver = ResolverCollector(registry)

    def collect(self) -> Iterator[Metric]:
        from dockerconnect.asgi._stats_metrics import stats_metrics
        from dockerconnect.metrics.prometheus import health_families

        stats = getattr(self._registry, "stats", None)
        if isinstance(stats, ResolverStats):
            yield from self._resolver.collect()
            return
        if stats is not None:
            yield from stats_metrics(stats)
        health = getattr(self._registry, "health", None)
        if health is not None and hasattr(health, "items"):
            yield from health_families(dict(health.items()))


def connector_health(registry: Any) -> dict[str, str] | None:
    """Each connector's state from the registry's ``health`` mapping, if it has one."""
    health = getattr(registry, "health", None)
    if health is None or not hasattr(health, "items"):
        return None
    return {str(name): str(getattr(h, "state", h)) for name, h in health.items()}


@attrs.define
class _Durations:
    """One route's request-duration histogram: counts per bucket (not
    cumulative; the last is ``+Inf``) and the sum of every observation."""

    counts: list[int] = attrs.field(factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0


class ServerMetrics:
    """The metrics one application keeps, exposed from its own ``CollectorRegistry``.

    Each request costs a few dictionary updates; the Prometheus families are
    built from those counts when ``/metrics`` is scraped.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.durations: dict[str, _Durations] = {}
        self.bytes: Counter[str] = Counter()
        self._collectors: CollectorRegistry | None = None

    def observe(self, method: str, route: str, status: int, seconds: float, sent: int) -> None:
        # The method is the client's word: any but the HTTP ones counts as
        # "other", so a client cannot make series without bound.
        if method not in _METHODS:
            method = "other"
        self.requests[method, route, str(status)] += 1
        durations = self.durations.get(route)
        if durations is None:
            durations = self.durations[route] = _Durations()
        # A bucket counts the observations at most its bound (``le``).
        durations.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        durations.total += seconds
        if sent:
            self.bytes[route] += sent

    def collect(self) -> Iterator[Metric]:
        """The server's own families (``prometheus_client`` must be importable)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily(
            "dockerconnect_http_requests",
            "HTTP requests served, by method, route and status.",
            labels=["method", "route", "status"],
        )
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        duration = HistogramMetricFamily(
            "dockerconnect_http_request_duration_seconds",
            "Time to answer a request, to its last byte.",
            labels=["route"],
        )
        bounds = [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]  # as prometheus_client writes them
        for route, durations in sorted(self.durations.items()):
            cumulative = list(itertools.accumulate(durations.counts))
            duration.add_metric(
                [route], list(zip(bounds, cumulative, strict=True)), sum_value=durations.total
            )
        yield duration
        sent = CounterMetricFamily(
            "dockerconnect_http_response_bytes", "Body bytes sent, by route.", labels=["route"]
        )
        for route, count in sorted(self.bytes.items()):
            sent.add_metric([route], count)
        yield sent

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._collectors is None:
            collectors = CollectorRegistry(auto_describe=False)
            collectors.register(self)
            collectors.register(_RegistryCollector(self._registry))
            self._collectors = collectors
        return generate_latest(self._collectors)


def access_log(request: Request, response: Response, route: str, started: float) -> float:
    """Log one line for a finished request; the seconds it took."""
    seconds = time.monotonic() - started
    if not access.isEnabledFor(logging.INFO):
        return seconds
    client = request.scope.get("client") or ("-", 0)
    who = getattr(request.identity, "name", None) or "-"
    access.info(
        '%s %s "%s %s" %d %d %.3fs route=%s',
        client[0],
        who,
        request.method,
        request.path,
        response.status,
        response.sent_bytes,
        seconds,
        route,
    )
    return seconds


async def healthz(request: Request, response: Response) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    await response.json(200, {"status": "ok"})


def _store_writable(directory: str) -> str | None:
    """None if a file can be created in ``directory``, else why not."""
    path = os.path.join(directory, f".readyz-{secrets.token_hex(8)}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(path, "xb") as file:
            file.write(b"ok")
        os.unlink(path)
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    return None


async def readyz(ctx: Context, request: Request, response: Response) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    problem = await anyio.to_thread.run_sync(_store_writable, os.fspath(ctx.uploads.directory))
    checks: dict[str, Any] = {"store": "ok" if problem is None else problem}
    ready = problem is None
    health = connector_health(ctx.registry)
    if health is not None:
        checks["connectors"] = health
        # A cache with some upstreams down still serves what it holds and
        # what the others have; with every one down it can only serve what it holds.
        ready = ready and not (health and all(state == "down" for state in health.values()))
    await response.json(200 if ready else 503, {"ready": ready, "checks": checks})


async def metrics(server: ServerMetrics, request: Request, response: Response) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    body = server.render()
    await response.simple(200, [(b"content-type", _TEXT)], body)
