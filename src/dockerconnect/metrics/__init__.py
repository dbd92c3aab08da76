"""Exporting a resolver's counters and health: optional adapters.

- :mod:`dockerconnect.metrics.prometheus` (extra ``prometheus``): a
  ``prometheus_client`` collector, :class:`~dockerconnect.metrics.prometheus.ResolverCollector`.
- :mod:`dockerconnect.metrics.otel` (extra ``otel``): OpenTelemetry observable
  instruments over the same counters, :func:`~dockerconnect.metrics.otel.instrument`.

Both read :attr:`Resolver.stats <dockerconnect.Resolver.stats>` and
:attr:`Resolver.health <dockerconnect.Resolver.health>` when scraped; nothing
is counted twice and the resolver's hot paths do not know they exist. The
series are listed in the "Operating a mirror" guide.
"""

__all__: list[str] = []
