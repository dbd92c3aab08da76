"""What ``dockerconnect serve`` keeps in memory: it imports only what it serves with.

Each module a server imports stays resident, so the rooms a server does not
use are imported on first use: the OCI layout room, ``prometheus_client``
(until ``/metrics`` is scraped) and uvicorn's WebSocket support. These tests
check the imports in a fresh interpreter (``sys.modules`` of this one holds
everything the suite imported), and that the server's own request metrics,
now counted without ``prometheus_client``, expose what its ``Histogram``
and ``Counter`` would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dockerconnect
from dockerconnect._cli import parse_serve, uvicorn_options
from dockerconnect.asgi._ops import DURATION_BUCKETS, ServerMetrics

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(modules)


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_the_serve_path_imports_neither_layouts_nor_prometheus_nor_websockets(
    tmp_path: Path,
) -> None:
    modules = _modules_after(
        f"""
        from dockerconnect._cli import build_app, parse_serve
        import uvicorn
        config = parse_serve(["--store", {str(tmp_path)!r}, "--upstream", "http://127.0.0.1:9"])
        app = build_app(config)
        uvicorn.Config(app, lifespan="off", ws="none").load()
        """
    )
    assert "dockerconnect.asgi._app" in modules  # the app really was built
    assert "dockerconnect.http" in modules
    for package in ("dockerconnect.layout", "prometheus_client", "websockets"):
        assert not _loaded(modules, package), package


def test_a_scrape_imports_prometheus_and_the_layout_names_import_on_use() -> None:
    modules = _modules_after(
        """
        import dockerconnect
        from dockerconnect.asgi._ops import ServerMetrics
        assert ServerMetrics(object()).render().startswith(b"# HELP")
        assert dockerconnect.OciLayoutConnector.__name__ == "OciLayoutConnector"
        """
    )
    assert _loaded(modules, "prometheus_client")
    assert "dockerconnect.layout" in modules


def test_lazy_public_names_are_the_real_objects() -> None:
    import dockerconnect.asgi
    import dockerconnect.layout
    from dockerconnect.asgi._stats_metrics import stats_metrics

    assert dockerconnect.OciLayoutConnector is dockerconnect.layout.OciLayoutConnector
    assert dockerconnect.export_layout is dockerconnect.layout.export_layout
    assert dockerconnect.asgi.stats_metrics is stats_metrics
    assert {"OciLayoutConnector", "export_layout"} <= set(dir(dockerconnect))
    assert "stats_metrics" in dir(dockerconnect.asgi)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = dockerconnect.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = dockerconnect.asgi.no_such_name  # type: ignore[attr-defined]


def test_uvicorn_runs_without_websockets() -> None:
    options = uvicorn_options(parse_serve([]))
    assert options["ws"] == "none"
    assert options["access_log"] is False


def _samples(text: str, prefix: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(prefix))


def test_request_metrics_match_prometheus_clients_own_histogram_and_counters() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    observations = [
        ("GET", "blob", 200, 0.003, 10),
        ("GET", "blob", 200, 0.005, 0),  # on a bound: counted in that bucket
        ("GET", "blob", 404, 0.07, 0),
        ("HEAD", "manifest", 200, 3.0, 0),
        ("GET", "manifest", 200, 42.0, 512),  # past the last bound: only +Inf
    ]
    ours = ServerMetrics(object())
    reference = CollectorRegistry()
    requests = Counter(
        "dockerconnect_http_requests", "", ["method", "route", "status"], registry=reference
    )
    duration = Histogram(
        "dockerconnect_http_request_duration_seconds",
        "",
        ["route"],
        registry=reference,
        buckets=DURATION_BUCKETS,
    )
    sent = Counter("dockerconnect_http_response_bytes", "", ["route"], registry=reference)
    for method, route, status, seconds, size in observations:
        ours.observe(method, route, status, seconds, size)
        requests.labels(method, route, str(status)).inc()
        duration.labels(route).observe(seconds)
        if size:
            sent.labels(route).inc(size)
    got = ours.render().decode()
    want = generate_latest(reference).decode()
    for prefix in (
        "dockerconnect_http_requests_total",
        "dockerconnect_http_request_duration_seconds_bucket",
        "dockerconnect_http_request_duration_seconds_count",
        "dockerconnect_http_request_duration_seconds_sum",
        "dockerconnect_http_response_bytes_total",
    ):
        assert _samples(got, prefix) == _samples(want, prefix), prefix
    assert _samples(got, "dockerconnect_http_requests_total") != []
    assert 'le="0.005",route="blob"} 2.0' in got


def test_the_package_still_lists_every_public_name() -> None:
    for name in dockerconnect.__all__:
        assert getattr(dockerconnect, name) is not None, name
