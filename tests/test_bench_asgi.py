"""The ASGI-server benchmark's quick mode runs under every installed server.

``benchmarks/bench_asgi.py --quick`` serves ``examples/asgi_server.py`` under
uvicorn (two configurations), granian and hypercorn as subprocesses on
127.0.0.1. This test checks that each installed server produced a row whose
bodies the client verified, and that a server that is not installed is
skipped with a note rather than failing the run. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_asgi.py"

pytestmark = pytest.mark.timeout(180)


def _bench_module() -> ModuleType:
    name = "bench_asgi_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench-asgi")
    scratch = tmp_path_factory.mktemp("bench-asgi-tmp")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--output", str(output), "--tmp", str(scratch)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, f"bench_asgi --quick failed:\n{done.stdout}\n{done.stderr}"
    assert (output / "asgi.md").is_file()
    data: dict[str, Any] = json.loads((output / "asgi.json").read_text())
    return data


def test_a_row_per_server(result: dict[str, Any]) -> None:
    servers = _bench_module().SERVERS
    rows = result["servers"]
    assert [row["server"] for row in rows] == [s.name for s in servers]
    assert result["quick"] is True


def test_every_installed_server_served_verified_bodies(result: dict[str, Any]) -> None:
    servers = {s.name: s for s in _bench_module().SERVERS}
    measured = 0
    for row in result["servers"]:
        if servers[row["server"]].missing():
            assert "not installed" in row["skipped"]
            continue
        measured += 1
        assert "error" not in row, row
        assert row["verified"] is True
        assert isinstance(row["pathsend"], bool)
        assert row["pathsend"] == ("http.response.pathsend" in row["extensions"])
        assert row["big"]["runs"] >= 1
        assert row["small"]["requests_per_run"] == row["small"]["clients"] * 5
        assert row["peak_rss_mib"] > 0
    assert measured >= 2  # uvicorn is a dev dependency: both of its rows at least
