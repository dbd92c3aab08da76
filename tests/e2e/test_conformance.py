"""The OCI distribution-spec conformance suites against ``dockerconnect serve``.

Both builds in ``shared/oci-conformance`` (the v1.1 ginkgo suite and the
suite at the spec's head) run against the server hosted (no connectors) and
in front of an upstream ``docker-registry``. Without the suites the tests are
skipped loudly (``OCI_CONFORMANCE_DIR`` names another place); under
``CI=true`` they fail.

Every case must pass: blob DELETE, manifests and blobs by ``sha512``
digests, index children named by them, and referrers are all the
Resolver's own. Each run prints the suite's summary line.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockerconnect.testing import DistributionRegistry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _suites() -> Path | None:
    named = os.environ.get("OCI_CONFORMANCE_DIR")
    candidates = [Path(named)] if named else []
    candidates += [p / "shared" / "oci-conformance" for p in (ROOT.parent, ROOT.parent.parent)]
    for candidate in candidates:
        if (candidate / "run-v1.1.sh").is_file() and (candidate / "run-head.sh").is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def suites() -> Path:
    found = _suites()
    if found is None:
        reason = (
            "OCI CONFORMANCE SUITES NOT RUN: shared/oci-conformance not found "
            "(set OCI_CONFORMANCE_DIR)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def _failures(out: Path, suite: str) -> list[str]:
    if suite == "v1.1":
        text = (
            (out / "failures.txt").read_text(errors="replace")
            if (out / "failures.txt").exists()
            else ""
        )
        return [line[4:] for line in text.splitlines() if line.startswith("=== ")]
    text = (out / "failures.log").read_text(errors="replace")
    return re.findall(r'msg="failed test" name="([^"]+)"', text)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("suite", ["v1.1", "head"])
@pytest.mark.parametrize("mode", ["hosted", "proxied"])
def test_conformance(
    suite: str, mode: str, suites: Path, tmp_path: Path, make_server: Any, capsys: Any
) -> None:
    upstream = None
    if mode == "proxied":
        upstream = DistributionRegistry(root=tmp_path / "upstream")
        upstream.start()
        server = make_server([upstream.url])
    else:
        server = make_server([])
    try:
        out = tmp_path / f"conformance-{suite}"
        if suite == "v1.1":
            command = [str(suites / "run-v1.1.sh"), server.url, str(out)]
        else:
            command = [str(suites / "run-head.sh"), server.address, str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    finally:
        if upstream is not None:
            upstream.stop()
    summary = re.search(r"\d+ passed, \d+ failed, \d+ skipped", done.stdout)
    assert summary is not None, done.stdout + done.stderr
    with capsys.disabled():
        print(f"\nOCI conformance {suite}, {mode}: {summary.group(0)}")
    failures = _failures(out, suite)
    assert failures == [], f"{summary.group(0)}; failed:\n" + "\n".join(failures)
    assert "Traceback" not in server.log_text()
