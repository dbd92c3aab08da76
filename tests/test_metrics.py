"""Metrics: the Prometheus collector and the OpenTelemetry adapter over a resolver."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dockerconnect import HealthPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.asgi._ops import ServerMetrics
from dockerconnect.errors import UpstreamError
from dockerconnect.metrics.prometheus import ResolverCollector
from dockerconnect.testing import FakeUpstream, random_image

pytestmark = pytest.mark.anyio


def _resolver(*connectors: FakeUpstream) -> Resolver:
    return Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,
        health=HealthPolicy(failures=1),
    )


async def _exercise(r: Resolver, hub: FakeUpstream, down: FakeUpstream) -> None:
    await r.get_manifest("app", "v1")
    await r.get_manifest("app", "v1")
    with pytest.raises(UpstreamError):
        await r.get_manifest("other", "v1")


async def test_prometheus_series_have_labels_histograms_and_health() -> None:
    hub, down = FakeUpstream("hub:5000"), FakeUpstream("down")
    hub.add("app", random_image(seed=1), tag="v1")
    down.faults.fail = True
    async with _resolver(down, hub) as r:
        await _exercise(r, hub, down)
        registry = CollectorRegistry()
        registry.register(ResolverCollector(r))
        text = generate_latest(registry).decode()
    assert (
        'dockerconnect_upstream_requests_total{connector="hub:5000",operation="get_manifest",'
        'outcome="hit"} 1.0' in text
    )
    assert (
        'dockerconnect_upstream_requests_total{connector="down",operation="get_manifest",'
        'outcome="error"} 1.0' in text
    )
    assert (
        'dockerconnect_upstream_request_duration_seconds_count{connector="hub:5000",'
        'operation="get_manifest"} 2.0' in text  # the hit and the miss for "other"
    )
    assert (
        'dockerconnect_upstream_request_duration_seconds_bucket{connector="hub:5000",'
        'le="+Inf",operation="get_manifest"} 2.0' in text
    )
    assert 'dockerconnect_lookups_total{connector="local",outcome="hit"} 1.0' in text
    assert 'dockerconnect_connector_up{connector="down"} 0.0' in text
    assert 'dockerconnect_connector_state{connector="down",state="down"} 1.0' in text
    assert 'dockerconnect_health_changes_total{connector="down",state="down"} 1.0' in text
    assert 'dockerconnect_health_skips_total{connector="down"} 1.0' in text
    assert "hub:5000:get_manifest" not in text  # labels, never joined names


async def test_the_servers_metrics_use_the_collector() -> None:
    hub = FakeUpstream("hub")
    hub.add("app", random_image(seed=2), tag="v1")
    async with _resolver(hub) as r:
        await r.get_manifest("app", "v1")
        text = ServerMetrics(r).render().decode()
    assert "dockerconnect_upstream_request_duration_seconds_bucket" in text
    assert 'dockerconnect_connector_up{connector="hub"} 1.0' in text


async def test_opentelemetry_adapter_observes_the_same_counters() -> None:
    metrics_sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    from dockerconnect.metrics.otel import instrument

    hub, down = FakeUpstream("hub"), FakeUpstream("down")
    hub.add("app", random_image(seed=3), tag="v1")
    down.faults.fail = True
    reader = export.InMemoryMetricReader()
    provider = metrics_sdk.MeterProvider(metric_readers=[reader])
    async with _resolver(down, hub) as r:
        instrument(r, provider.get_meter("dockerconnect"))
        await _exercise(r, hub, down)
        data = reader.get_metrics_data()
    points: dict[str, list[tuple[dict[str, str], float]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = [
                    (dict(p.attributes), p.value) for p in metric.data.data_points
                ]
    requests = points["dockerconnect.upstream.requests"]
    assert ({"connector": "hub", "operation": "get_manifest", "outcome": "hit"}, 1) in requests
    assert ({"connector": "down", "operation": "get_manifest", "outcome": "error"}, 1) in requests
    assert ({"connector": "down"}, 0) in points["dockerconnect.connector.up"]
    assert ({"connector": "hub"}, 1) in points["dockerconnect.connector.up"]
    provider.shutdown()
