"""skopeo pulls and pushes through ``dockerconnect serve`` in front of docker-registry.

All real software on 127.0.0.1: the upstream is Debian's ``docker-registry``,
the server is ``python -m dockerconnect serve`` (a Resolver with one HttpConnector
to the upstream, caching on), and the client is ``skopeo``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockerconnect import OCI_MANIFEST, Digest, Manifest
from dockerconnect.testing import (
    DistributionRegistry,
    RandomImage,
    RandomIndex,
    random_image,
    random_index,
    skopeo_push,
)

pytestmark = pytest.mark.e2e

#: Seconds any one skopeo run may take.
SKOPEO_TIMEOUT = 90.0
_BLOB_GET = re.compile(r'"GET /v2/([^ ]+)/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3})')


Skopeo = Callable[..., str]


def pull(skopeo: Skopeo, server: Any, ref: str, dest: Path, *, all_images: bool = False) -> str:
    """``skopeo copy`` from the server into an OCI layout; the layout's top digest."""
    args = ["copy", "--src-tls-verify=false", "--preserve-digests"]
    if all_images:
        args.append("--all")
    skopeo(*args, f"docker://{server.address}/{ref}", f"oci:{dest}:pulled")
    index = json.loads((dest / "index.json").read_text())
    (top,) = index["manifests"]
    return str(top["digest"])


def assert_layout_holds(dest: Path, content: RandomImage | RandomIndex) -> None:
    """Every manifest and blob of ``content`` is in the layout, byte for byte."""
    expected = {**{d: m.data for d, m in content.manifests.items()}, **content.blobs}
    for digest, data in expected.items():
        path = dest / "blobs" / digest.algorithm / digest.hex
        stored = path.read_bytes()
        assert hashlib.sha256(stored).hexdigest() == digest.hex
        assert stored == data


def upstream_blob_gets(upstream: DistributionRegistry, repository: str) -> Counter[str]:
    """Successful blob GETs per digest, from the upstream's own access log."""
    counts: Counter[str] = Counter()
    for name, digest, status in _BLOB_GET.findall(upstream.log_text()):
        if name == repository and status in ("200", "206", "307"):
            counts[digest] += 1
    return counts


def push_upstream(upstream: DistributionRegistry, repository: str, content: Any, tag: str) -> None:
    skopeo_push(upstream.address, repository, content, tag=tag)


def test_pull_through_a_single_platform_image(
    tmp_path: Path, upstream: DistributionRegistry, make_server: Any, skopeo: Skopeo
) -> None:
    image = random_image(layers=2, layer_size=200_000, seed=101)
    push_upstream(upstream, "e2e/single", image, "v1")
    server = make_server([upstream.url])
    top = pull(skopeo, server, "e2e/single:v1", tmp_path / "out")
    assert top == str(image.manifest.digest)
    assert_layout_holds(tmp_path / "out", image)
    # Pulled again, now from the server's own store: same digests.
    top = pull(skopeo, server, f"e2e/single@{image.manifest.digest}", tmp_path / "again")
    assert top == str(image.manifest.digest)
    assert_layout_holds(tmp_path / "again", image)


def test_pull_through_a_multi_arch_index(
    tmp_path: Path, upstream: DistributionRegistry, make_server: Any, skopeo: Skopeo
) -> None:
    index = random_index(platforms=("linux/amd64", "linux/arm64/v8"), layer_size=50_000, seed=102)
    push_upstream(upstream, "e2e/multi", index, "v1")
    server = make_server([upstream.url])
    top = pull(skopeo, server, "e2e/multi:v1", tmp_path / "out", all_images=True)
    assert top == str(index.manifest.digest)
    assert_layout_holds(tmp_path / "out", index)


def test_skopeo_inspect_agrees_with_the_server(
    upstream: DistributionRegistry, make_server: Any, skopeo: Skopeo
) -> None:
    image = random_image(layers=1, seed=103)
    index = random_index(layer_size=2000, seed=104)
    push_upstream(upstream, "e2e/inspect", image, "image")
    push_upstream(upstream, "e2e/inspect", index, "index")
    server = make_server([upstream.url])
    for tag, content in (("image", image), ("index", index)):
        ref = f"docker://{server.address}/e2e/inspect:{tag}"
        status, headers, body = server.request("GET", f"/v2/e2e/inspect/manifests/{tag}")
        assert status == 200
        assert headers["docker-content-digest"] == str(content.manifest.digest)
        raw = skopeo("inspect", "--tls-verify=false", "--raw", ref).encode()
        assert raw.rstrip(b"\n") == body.rstrip(b"\n")
        assert str(Digest.from_bytes(body)) == headers["docker-content-digest"]
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", ref))
        if tag == "image":
            assert inspected["Digest"] == str(content.manifest.digest)
            assert inspected["Layers"] == [str(d.digest) for d in image.manifest.layers]


def _derived_image(seed: int) -> tuple[RandomImage, RandomImage]:
    """(base, app): ``app`` has ``base``'s two layers and one of its own."""
    app = random_image(layers=3, layer_size=[60_000, 60_000, 20_000], seed=seed)
    base_config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    base_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": str(Digest.from_bytes(base_config)),
            "size": len(base_config),
        },
        "layers": [d.to_dict() for d in app.manifest.layers[:2]],
    }
    base_manifest = Manifest.parse(json.dumps(base_doc).encode(), OCI_MANIFEST)
    base = RandomImage(base_manifest, base_config, app.layers[:2], app.platform)
    return base, app


def test_push_whose_base_layers_live_only_upstream(
    upstream: DistributionRegistry, make_server: Any
) -> None:
    base, app = _derived_image(105)
    base_layers = {str(d.digest) for d in app.manifest.layers[:2]}
    own = {str(d) for d in app.blobs} - base_layers
    push_upstream(upstream, "e2e/app", base, "base")
    server = make_server([upstream.url])
    connector = server.json("GET", "/_dockerconnect/connectors")["connectors"][0]

    skopeo_push(server.address, "e2e/app", app, tag="v1")  # accepted

    report = server.json("GET", "/_dockerconnect/check/e2e/app/v1")
    assert report["ok"] is True
    where = {e["digest"]: e["location"] for e in report["entries"]}
    assert {d: where[d] for d in base_layers} == dict.fromkeys(base_layers, connector)
    assert {d: where[d] for d in own} == dict.fromkeys(own, "local")
    # The base layers were never copied: the upstream served no blob GET.
    assert upstream_blob_gets(upstream, "e2e/app") == Counter()

    removed = server.json("POST", f"/_dockerconnect/connectors/remove?name={connector}")
    assert removed == {"removed": connector, "connectors": []}
    report = server.json("GET", "/_dockerconnect/check/e2e/app/v1")
    assert report["ok"] is False
    assert set(report["missing"]) == base_layers


def test_eight_concurrent_cold_pulls_fetch_each_blob_once(
    tmp_path: Path, upstream: DistributionRegistry, make_server: Any
) -> None:
    image = random_image(layers=3, layer_size=1_000_000, seed=106)
    push_upstream(upstream, "e2e/cold", image, "v1")
    server = make_server([upstream.url])
    tool = shutil.which("skopeo")
    assert tool is not None
    clients = [
        subprocess.Popen(
            [
                tool,
                "--insecure-policy",
                "copy",
                "--src-tls-verify=false",
                f"docker://{server.address}/e2e/cold:v1",
                f"oci:{tmp_path / f'out{i}'}:pulled",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")},
        )
        for i in range(8)
    ]
    for client in clients:
        output, _ = client.communicate(timeout=SKOPEO_TIMEOUT)
        assert client.returncode == 0, output.decode(errors="replace")
    for i in range(8):
        assert_layout_holds(tmp_path / f"out{i}", image)
    gets = upstream_blob_gets(upstream, "e2e/cold")
    assert gets == Counter({str(d): 1 for d in image.blobs}), server.log_text()[-3000:]


def test_stopped_upstream_cached_content_still_pulls(
    tmp_path: Path, upstream: DistributionRegistry, make_server: Any, skopeo: Skopeo
) -> None:
    image = random_image(layers=2, layer_size=30_000, seed=107)
    other = random_image(layers=1, seed=108)
    push_upstream(upstream, "e2e/offline", image, "v1")
    push_upstream(upstream, "e2e/offline", other, "never-pulled")
    server = make_server([upstream.url], tag_ttl=1.0)
    assert pull(skopeo, server, "e2e/offline:v1", tmp_path / "warm") == str(image.manifest.digest)
    upstream.stop()

    # By digest: immutable, cached forever.
    digest_ref = f"e2e/offline@{image.manifest.digest}"
    assert pull(skopeo, server, digest_ref, tmp_path / "by-digest") == str(image.manifest.digest)
    assert_layout_holds(tmp_path / "by-digest", image)
    # By tag, still fresh (no upstream asked)...
    assert pull(skopeo, server, "e2e/offline:v1", tmp_path / "fresh") == str(image.manifest.digest)
    # ...and past its TTL: revalidation fails, and the default policy
    # (stale_if_error=inf) serves the cached tag rather than an error.
    time.sleep(1.5)
    assert pull(skopeo, server, "e2e/offline:v1", tmp_path / "stale") == str(image.manifest.digest)
    stats = server.json("GET", "/_dockerconnect/stats")
    assert stats["stale_serves"] >= 1
    # What was never pulled is not there to serve: an upstream error.
    status, _, body = server.request("GET", "/v2/e2e/offline/manifests/never-pulled")
    assert status == 502, body


def _worker_processes(parent: int) -> list[int]:
    """The uvicorn worker processes (multiprocessing spawns) whose parent is ``parent``."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            workers.append(int(entry.name))
    return workers


def test_two_workers_start_and_serve_one_store(
    tmp_path: Path, upstream: DistributionRegistry, make_server: Any, skopeo: Skopeo
) -> None:
    image = random_image(layers=2, layer_size=100_000, seed=109)
    push_upstream(upstream, "e2e/workers", image, "v1")
    server = make_server([upstream.url], flags=["--workers", "2"])
    deadline = time.monotonic() + 30.0
    while len(_worker_processes(server.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_worker_processes(server.pid)) == 2, server.log_text()[-4000:]
    # Several pulls, so both workers take connections; they share one store.
    for n in range(3):
        top = pull(skopeo, server, "e2e/workers:v1", tmp_path / f"out{n}")
        assert top == str(image.manifest.digest)
        assert_layout_holds(tmp_path / f"out{n}", image)
    assert server.request("GET", "/healthz")[0] == 200
    assert "Traceback" not in server.log_text()
