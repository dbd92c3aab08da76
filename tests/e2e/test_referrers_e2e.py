"""Referrers end to end with a real client: regctl (regclient) through ``dockerconnect serve``.

Three set-ups, as issue 13 asks:

1. hosted: ``regctl artifact put --subject`` pushes an SBOM and a signature
   through the server, ``artifact list`` / ``artifact tree`` read them back;
2. in front of Debian's ``docker-registry``, which has no referrers API:
   regctl pushes the artifacts to it directly (so they are in the tag
   schema), and the server's connector must fall back to that schema;
3. in front of another ``dockerconnect serve``, which has the API: the edge
   asks it through ``/v2/<name>/referrers/`` (counted in its metrics).

Without regctl the tests are skipped loudly (``REGCTL_BIN`` names another
place); under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockerconnect.testing import DistributionRegistry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SPDX = "application/spdx+json"
SIG = "application/vnd.example.signature"


def _regctl() -> str | None:
    named = os.environ.get("REGCTL_BIN")
    candidates = [Path(named)] if named else []
    candidates += [p / "shared" / "tools" / "regctl" for p in (ROOT.parent, ROOT.parent.parent)]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("regctl")


@pytest.fixture
def regctl(tmp_path: Path) -> Callable[..., str]:
    """``regctl(host, *args, stdin=b"")``: regctl against plain-HTTP ``host``, with a
    private config; returns stdout, and fails the test with regctl's output."""
    tool = _regctl()
    if tool is None:
        reason = "REGCTL END-TO-END TESTS NOT RUN: regctl not found (set REGCTL_BIN)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    home = tmp_path / "regctl-home"
    home.mkdir()

    def run(host: str, *args: str, stdin: bytes = b"") -> str:
        done = subprocess.run(
            [tool, "--host", f"reg={host},tls=disabled", *args],
            input=stdin,
            capture_output=True,
            timeout=90,
            env={**os.environ, "HOME": str(home)},
        )
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, f"regctl {' '.join(args)} failed:\n{err}{out}"
        return out

    return run


def put_image_and_artifacts(regctl: Callable[..., str], host: str) -> dict[str, str]:
    """An image (``app:v1``) with an SBOM and a signature referring to it; their digests."""
    ref = f"{host}/app:v1"
    regctl(host, "artifact", "put", "--artifact-type", "application/vnd.example.image", ref,
           stdin=b"an image")  # fmt: skip
    digests = {"image": regctl(host, "image", "digest", ref).strip()}
    for kind, data in ((SPDX, b'{"spdxVersion": "SPDX-2.3"}'), (SIG, b"signature")):
        regctl(host, "artifact", "put", "--artifact-type", kind, "--subject", ref, stdin=data)
    return digests


def listed(regctl: Callable[..., str], host: str, *args: str) -> dict[str, str]:
    """``regctl artifact list``: each referrer's digest and artifact type."""
    out = regctl(
        host, "artifact", "list", f"{host}/app:v1", *args, "--format", "{{json .Manifest}}"
    )
    index = json.loads(out)
    return {m["digest"]: m.get("artifactType", "") for m in index["manifests"]}


def tree_types(regctl: Callable[..., str], host: str) -> list[str]:
    out = regctl(host, "artifact", "tree", f"{host}/app:v1")
    return sorted(re.findall(r"sha256:[0-9a-f]{64}: (\S+)", out))


def assert_both_listed(regctl: Callable[..., str], host: str) -> None:
    assert sorted(listed(regctl, host).values()) == [SPDX, SIG]
    assert list(listed(regctl, host, "--filter-artifact-type", SIG).values()) == [SIG]
    assert tree_types(regctl, host) == [SPDX, SIG]


def metric(server: Any, name: str, **labels: str) -> float:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_hosted(regctl: Callable[..., str], make_server: Any) -> None:
    server = make_server([])
    put_image_and_artifacts(regctl, server.address)
    assert_both_listed(regctl, server.address)
    # The server has the API, so regctl left no tag-schema tag behind.
    assert regctl(server.address, "tag", "ls", f"{server.address}/app").split() == ["v1"]
    assert "Traceback" not in server.log_text()


def test_in_front_of_docker_registry_the_tag_schema_is_used(
    regctl: Callable[..., str], make_server: Any, upstream: DistributionRegistry
) -> None:
    digests = put_image_and_artifacts(regctl, upstream.address)
    # docker-registry has no referrers API: regctl kept them in the tag schema.
    schema = "sha256-" + digests["image"].split(":", 1)[1]
    assert schema in regctl(upstream.address, "tag", "ls", f"{upstream.address}/app").split()
    server = make_server([upstream.url])
    assert_both_listed(regctl, server.address)
    assert metric(server, "dockerconnect_upstream_requests_total", operation="referrers") >= 1
    assert f"/v2/app/manifests/{schema}" in upstream.log_text()
    # A referrer pushed through the server joins those of the upstream.
    ref = f"{server.address}/app:v1"
    regctl(server.address, "artifact", "put", "--artifact-type", "application/x-local",
           "--subject", ref, stdin=b"local")  # fmt: skip
    assert sorted(listed(regctl, server.address).values()) == sorted(
        [SPDX, SIG, "application/x-local"]
    )
    # The operator's view: where each referrer resolves.
    report = server.json("GET", "/_dockerconnect/check/app/v1?referrers=true")
    assert report["ok"]
    where = {e.get("artifactType"): e["location"] for e in report["entries"]}
    assert where["application/x-local"] == "local"  # pushed here
    assert where[SPDX] is not None and where[SIG] is not None  # here or upstream
    assert "Traceback" not in server.log_text()


def test_in_front_of_another_dockerconnect_the_api_is_used(
    regctl: Callable[..., str], make_server: Any
) -> None:
    inner = make_server([])
    put_image_and_artifacts(regctl, inner.address)
    edge = make_server([inner.url])
    assert_both_listed(regctl, edge.address)
    # The inner server holds no tag-schema tags: only its API can have answered.
    assert regctl(inner.address, "tag", "ls", f"{inner.address}/app").split() == ["v1"]
    assert metric(edge, "dockerconnect_upstream_requests_total", operation="referrers") >= 1
    assert "Traceback" not in inner.log_text() + edge.log_text()
