"""The OCI distribution-spec conformance suites against ``dockerconnect serve``.

Both builds in ``shared/oci-conformance`` (the v1.1 ginkgo suite and the
suite at the spec's head) run against the server hosted (no connectors) and
in front of an upstream ``docker-registry``. Without the suites the tests are
skipped loudly (``OCI_CONFORMANCE_DIR`` names another place); under
``CI=true`` they fail.

Every case passes (blob DELETE, manifests and blobs by ``sha512`` digests
and index children named by them are the Resolver's own), except, while the
Resolver has no ``referrers`` (detected at run time), the referrers cases:
once it has them, their failures are failures. Each run prints the suite's
summary line.

A third mode, *featured*, serves a ``Resolver`` wrapped in
``_featured_registry.FeaturedRegistry``, a test double that adds
``referrers``: there every case must pass, whatever the Resolver has.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockerconnect import Resolver
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


def lacking() -> set[str]:
    """The features the library's Resolver does not have yet."""
    return {name for name in ("referrers",) if not hasattr(Resolver, name)}


def explained_by(name: str) -> str | None:
    """The missing feature a failing test's name points at, if any."""
    lowered = name.lower()
    if "referrers" in lowered or "listing references" in lowered:
        return "referrers"
    return None


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
@pytest.mark.parametrize("mode", ["hosted", "proxied", "featured"])
def test_conformance(
    suite: str, mode: str, suites: Path, tmp_path: Path, make_server: Any, capsys: Any
) -> None:
    upstream = None
    if mode == "proxied":
        upstream = DistributionRegistry(root=tmp_path / "upstream")
        upstream.start()
        server = make_server([upstream.url])
    elif mode == "featured":
        server = make_server([], factory="tests.e2e._featured_registry:app")
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
    missing = lacking()
    if mode == "featured":
        missing.clear()  # the test double has referrers
    unexplained = [name for name in _failures(out, suite) if explained_by(name) not in missing]
    assert unexplained == [], (
        f"{summary.group(0)}; failures no missing feature explains "
        f"(missing: {sorted(missing)}):\n" + "\n".join(unexplained)
    )
    assert "Traceback" not in server.log_text()
