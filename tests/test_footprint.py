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
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dockerconnect
from dockerconnect._cli import parse_serve, uvicorn_options
from dockerconnect.asgi._ops import DURATION_BUCKETS, ServerMetrics

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees only this checkout's
    ``src``; fail with its stderr unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = _python(script)
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


# -- the bound on what an upstream connection reads ahead -----------------------------

_TRANSFER = """
import hashlib, json, socket, sys, threading
import anyio
from dockerconnect._cli._tuning import READ_AHEAD_LIMIT, bound_read_ahead

SIZE = 32 * 1024 * 1024
payload = bytes(range(256)) * (SIZE // 256)
bounded = sys.argv[1] == "bounded"
if bounded:
    assert bound_read_ahead() and bound_read_ahead()  # idempotent

listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]

def serve():
    conn, _ = listener.accept()
    with conn:
        conn.sendall(payload)

threading.Thread(target=serve, daemon=True).start()

async def main():
    digest, got, most = hashlib.sha256(), 0, 0
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        protocol = getattr(stream, "_protocol", None)
        reads = 0
        while got < SIZE:
            if reads % 16 == 0:
                await anyio.sleep(0.005)  # let the kernel's buffer fill up
            chunk = await stream.receive(256 * 1024)
            reads += 1
            digest.update(chunk)
            got += len(chunk)
            if protocol is not None:
                most = max(most, len(chunk) + sum(map(len, protocol.read_queue)))
    return {"intact": got == SIZE and digest.digest() == hashlib.sha256(payload).digest(),
            "most": most, "limit": READ_AHEAD_LIMIT}

backend, options = sys.argv[2], json.loads(sys.argv[3])
print(json.dumps(anyio.run(main, backend=backend, backend_options=options)))
"""


def _transfer(mode: str, backend: str, options: dict[str, object]) -> dict[str, Any]:
    done = _python(_TRANSFER, mode, backend, json.dumps(options))
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


_BACKENDS = [
    pytest.param("asyncio", {"use_uvloop": False}, id="asyncio"),
    pytest.param("asyncio", {"use_uvloop": True}, id="uvloop"),
    pytest.param("trio", {}, id="trio"),
]


@pytest.mark.parametrize(("backend", "options"), _BACKENDS)
def test_a_bounded_stream_still_delivers_every_byte_in_order(
    backend: str, options: dict[str, object]
) -> None:
    if options.get("use_uvloop"):
        pytest.importorskip("uvloop")
    result = _transfer("bounded", backend, options)
    assert result["intact"]
    if backend == "asyncio":
        # At most the bound plus the one read that crossed it (256 KiB at most).
        assert 0 < result["most"] <= result["limit"] + 256 * 1024


def test_without_the_bound_uvloop_queues_more_than_it() -> None:
    """What the bound is for: unbounded, uvloop queues several reads per wake-up."""
    pytest.importorskip("uvloop")
    result = _transfer("unbounded", "asyncio", {"use_uvloop": True})
    assert result["intact"]
    assert result["most"] > result["limit"] + 256 * 1024


def test_the_bound_pauses_reading_only_past_the_limit() -> None:
    code = """
import anyio._backends._asyncio as backend
from dockerconnect._cli._tuning import bound_read_ahead

class Transport:
    paused = 0
    def set_write_buffer_limits(self, high=None, low=None): pass
    def pause_reading(self): self.paused += 1

assert bound_read_ahead(limit=1000)
protocol, transport = backend.StreamProtocol(), Transport()
protocol.connection_made(transport)
protocol.data_received(b"a" * 600)
assert transport.paused == 0
protocol.data_received(b"b" * 600)
assert transport.paused == 1
assert list(protocol.read_queue) == [b"a" * 600, b"b" * 600]
protocol.read_queue.clear()
protocol.data_received(b"c" * 10)
assert transport.paused == 1
print("ok")
"""
    done = _python(code, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_serve_bounds_read_ahead_before_uvicorn_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    import dockerconnect._cli as cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "bound_read_ahead", lambda: calls.append("bound") or True)
    monkeypatch.setattr(cli, "limit_malloc_arenas", lambda: calls.append("arenas") or True)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append("uvicorn"))
    assert cli.serve(["--store", str(tmp_path)]) == 0
    assert calls == ["bound", "arenas", "uvicorn"]


# -- malloc arenas ------------------------------------------------------------------

_ARENAS = """
import ctypes, sys, threading
from dockerconnect._cli._tuning import limit_malloc_arenas

if sys.argv[1] == "capped":
    assert limit_malloc_arenas() is True
start = threading.Barrier(8)

def churn():
    start.wait()
    for _ in range(2000):
        blocks = [bytearray(4096) for _ in range(16)]
        del blocks

threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def _arenas(mode: str) -> int:
    done = _python(_ARENAS, mode)
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _GLIBC, reason="mallopt(M_ARENA_MAX) is glibc's")
def test_the_server_process_uses_one_malloc_arena() -> None:
    assert _arenas("uncapped") > 1  # what the cap is for: threads get arenas of their own
    assert _arenas("capped") == 1


@pytest.mark.skipif(_GLIBC, reason="on glibc the cap applies")
def test_the_arena_cap_does_nothing_off_glibc() -> None:
    from dockerconnect._cli._tuning import limit_malloc_arenas

    assert limit_malloc_arenas() is False


def test_an_upstream_request_does_not_retry_a_failed_import() -> None:
    """httpcore imports sniffio whenever it makes a lock, an event or a shield;
    sniffio is a dependency so that this finds it in ``sys.modules`` instead of
    scanning ``sys.path`` for a module that is not there, every time."""
    done = _python(
        textwrap.dedent(
            """
            import sys, anyio
            import dockerconnect.http
            import httpcore._synchronization as sync

            looked = []

            class Watch:
                def find_spec(self, name, path=None, target=None):
                    looked.append(name)
                    return None

            async def main():
                sys.meta_path.insert(0, Watch())
                for _ in range(50):
                    async with sync.AsyncLock():  # each finds its backend when first used
                        pass
                    event = sync.AsyncEvent()
                    event.set()
                    await event.wait()
                    with sync.AsyncShieldCancellation():
                        pass

            anyio.run(main)
            print(len(looked), sorted(set(looked)))
            """
        )
    )
    assert done.stdout.split()[0] == "0", done.stdout
