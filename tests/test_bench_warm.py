"""The warm benchmark's quick mode runs, every warm request answers, and none
reaches the upstream.

``benchmarks/bench_warm.py --quick`` starts a real ``docker-registry`` and
``dockerconnect serve``. This test asserts what the upstream's access log
counted and that every round was measured, never timings. Without the
registry it is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockerconnect.testing import DistributionRegistry

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_warm.py"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not DistributionRegistry.available() and os.environ.get("CI") != "true",
        reason="SKIPPED LOUDLY: the warm benchmark needs docker-registry "
        "(apt-get install docker-registry)",
    ),
]


def test_quick_run_serves_warm_requests_without_the_upstream(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "warm.json").read_text())
    assert result["upstream_requests_warm"] == 0
    (server,) = result["servers"].values()
    assert set(server) == {"manifest_tag", "manifest_digest", "blob", "pull_tag"}
    for kind in server.values():
        (one,) = kind["rounds"]
        assert one["requests"] > 0 and one["wall_s"] > 0
    assert "| pull_tag |" in (tmp_path / "warm.md").read_text()
