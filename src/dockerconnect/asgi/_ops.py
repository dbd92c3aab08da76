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
  ``_stats_metrics``.

Loggers: ``dockerconnect.asgi`` (errors, start-up), ``dockerconnect.asgi.access``
(one INFO line per request).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric

from dockerconnect._stats import ResolverStats
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._http import Request, Response
from dockerconnect.asgi._routing import not_allowed
from dockerconnect.asgi._stats_metrics import stats_metrics
from dockerconnect.metrics.prometheus import ResolverCollector, health_families

__all__ = ["ServerMetrics", "access_log", "healthz", "metrics", "readyz"]

access = logging.getLogger("dockerconnect.asgi.access")

_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
#: Label sets whose series ``ServerMetrics`` keeps at hand.
_MAX_SERIES = 256


class _RegistryCollector:
    """Collects the registry's ``stats`` and connector health at scrape time.

    A :class:`~dockerconnect.Resolver`'s counters go through
    :class:`dockerconnect.metrics.prometheus.ResolverCollector`; any other
    registry's ``stats`` through the generic translation in ``_stats_metrics``.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._resolver = ResolverCollector(registry)

    def collect(self) -> Iterator[Metric]:
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


class ServerMetrics:
    """The metrics one application keeps, in its own ``CollectorRegistry``."""

    def __init__(self, registry: Any) -> None:
        self.collectors = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "dockerconnect_http_requests",
            "HTTP requests served, by method, route and status.",
            ["method", "route", "status"],
            registry=self.collectors,
        )
        self.duration = Histogram(
            "dockerconnect_http_request_duration_seconds",
            "Time to answer a request, to its last byte.",
            ["route"],
            registry=self.collectors,
        )
        self.bytes = Counter(
            "dockerconnect_http_response_bytes",
            "Body bytes sent, by route.",
            ["route"],
            registry=self.collectors,
        )
        self.collectors.register(_RegistryCollector(registry))
        #: Each label set's series, looked up once (``labels()`` takes a lock
        #: and builds a key on every call); bounded, as methods are the client's.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._sent: dict[str, Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float, sent: int) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (self.requests.labels(method, route, str(status)), self.duration.labels(route))
            if len(self._series) < _MAX_SERIES:
                self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)
        if sent:
            sent_bytes = self._sent.get(route)
            if sent_bytes is None:
                sent_bytes = self.bytes.labels(route)
                if len(self._sent) < _MAX_SERIES:
                    self._sent[route] = sent_bytes
            sent_bytes.inc(sent)

    def render(self) -> bytes:
        return generate_latest(self.collectors)


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
