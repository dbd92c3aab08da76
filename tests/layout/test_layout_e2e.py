"""OCI layouts with real tools: docker-registry, skopeo and umoci on 127.0.0.1.

- ``skopeo copy docker://… oci:DIR:TAG`` → :class:`OciLayoutConnector` → a
  Resolver, and → the example ASGI server pulled with skopeo: same digests.
- :func:`export_layout` → ``skopeo inspect``, ``skopeo copy`` back to a
  registry and ``umoci unpack`` all succeed; an index of two platforms and an
  image with a referrer round-trip with the same digests.

Without ``docker-registry``, ``skopeo`` or ``umoci`` the tests are skipped
with the reason, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _layouts import check_layout

from dockerconnect import (
    OCI_INDEX,
    FilesystemBlobStore,
    FilesystemManifestStore,
    Manifest,
    MemoryBlobStore,
    MemoryManifestStore,
    OciLayoutConnector,
    Resolver,
    export_layout,
)
from dockerconnect.http import HttpConnector
from dockerconnect.testing import (
    DistributionRegistry,
    push_content,
    random_image,
    random_index,
    skopeo_push,
)
from dockerconnect.testing._distribution import stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT = 120.0
Run = Callable[..., str]


def _require(what: str, present: bool) -> None:
    if present:
        return
    reason = f"END-TO-END TESTS NOT RUN: {what} is not installed (apt-get install {what})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _real_tools() -> None:
    _require("docker-registry", DistributionRegistry.available())
    _require("skopeo", shutil.which("skopeo") is not None)
    _require("umoci", shutil.which("umoci") is not None)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    with DistributionRegistry(root=tmp_path / "upstream") as registry:
        yield registry


def _tool(name: str, env: dict[str, str] | None = None) -> Run:
    path = shutil.which(name)
    assert path is not None

    def run(*args: str) -> str:
        done = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env
        )
        assert done.returncode == 0, f"{name} {' '.join(args)} failed:\n{done.stderr}{done.stdout}"
        return done.stdout

    return run


@pytest.fixture
def skopeo(tmp_path: Path) -> Run:
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "skopeo-auth.json")}
    run = _tool("skopeo", env)
    return lambda *args: run("--insecure-policy", *args)


@pytest.fixture
def umoci() -> Run:
    return _tool("umoci")


def _upstream_digest(upstream: DistributionRegistry, repository: str, tag: str) -> str:
    accept = "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
    request = urllib.request.Request(
        f"{upstream.url}/v2/{repository}/manifests/{tag}", method="HEAD", headers={"Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.headers["Docker-Content-Digest"])


def _top_digest(layout: Path, name: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        e
        for e in index["manifests"]
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == name
    ]
    return str(entry["digest"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVE = """
import sys
sys.path.insert(0, {examples!r})
import uvicorn
from asgi_server import create_app
from dockerconnect import MemoryBlobStore, MemoryManifestStore, OciLayoutConnector, Resolver

resolver = Resolver(
    "mirror",
    manifests=MemoryManifestStore(),
    blobs=MemoryBlobStore(),
    connectors=[OciLayoutConnector({layout!r})],
)
uvicorn.run(create_app(resolver), host="127.0.0.1", port={port}, log_level="warning")
"""


@pytest.fixture
def serve_layout(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Serve a layout through a Resolver in the example ASGI server; its address."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(layout: Path) -> str:
        port = _free_port()
        code = SERVE.format(examples=str(ROOT / "examples"), layout=str(layout), port=port)
        with (tmp_path / f"serve{port}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            )
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"serve{port}.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    return f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the example server did not come up")

    yield start
    for process in processes:
        stop_process(process)


def test_a_skopeo_layout_served_and_pulled(
    tmp_path: Path,
    upstream: DistributionRegistry,
    skopeo: Run,
    serve_layout: Callable[[Path], str],
) -> None:
    image = random_image(seed=1, layers=2, layer_size=300_000)
    index = random_index(seed=2, platforms=("linux/amd64", "linux/arm64/v8"), layer_size=20_000)
    skopeo_push(upstream.address, "team/app", image, tag="v1")
    skopeo_push(upstream.address, "team/app", index, tag="multi")
    carried = tmp_path / "carried"
    for tag in ("v1", "multi"):
        skopeo(
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{upstream.address}/team/app:{tag}",
            f"oci:{carried}:{tag}",
        )
    assert _top_digest(carried, "v1") == str(image.manifest.digest)

    async def through_a_resolver() -> None:
        async with Resolver(
            "mirror",
            manifests=MemoryManifestStore(),
            blobs=MemoryBlobStore(),
            connectors=[OciLayoutConnector(carried)],
        ) as registry:
            for content, tag in ((image, "v1"), (index, "multi")):
                top = await registry.get_manifest("team/app", tag)
                assert top.digest == content.manifest.digest
                for digest, data in content.blobs.items():
                    async with await registry.open_blob("team/app", digest) as stream:
                        assert await stream.read() == data

    anyio.run(through_a_resolver)

    address = serve_layout(carried)
    pulled = tmp_path / "pulled"
    for tag in ("v1", "multi"):
        skopeo(
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{address}/team/app:{tag}",
            f"oci:{pulled}:{tag}",
        )
    assert _top_digest(pulled, "v1") == str(image.manifest.digest)
    assert _top_digest(pulled, "multi") == str(index.manifest.digest)
    check_layout(pulled)


async def test_an_export_that_skopeo_and_umoci_read(
    tmp_path: Path, upstream: DistributionRegistry, skopeo: Run, umoci: Run
) -> None:
    image = random_image(seed=3, layers=2, layer_size=50_000)  # real gzip tar layers
    index = random_index(seed=4, platforms=("linux/amd64", "linux/arm64/v8"), layer_size=10_000)
    subject = image.manifest.descriptor()
    signature = random_image(seed=5, layers=1, layer_size=100, subject=subject)
    await push_content(upstream.url, "team/app", image, tags=["v1"])
    await push_content(upstream.url, "team/app", index, tags=["multi"])
    await push_content(upstream.url, "team/app", signature, tags=[])
    schema_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [signature.manifest.descriptor().to_dict()],
    }
    schema = Manifest.parse(json.dumps(schema_doc).encode(), OCI_INDEX)
    await push_content(
        upstream.url,
        "team/app",
        _Only(schema),  # type: ignore[arg-type]
        tags=[f"sha256-{subject.digest.hex}"],
    )

    out = tmp_path / "out"
    store = tmp_path / "store"
    async with (
        HttpConnector(upstream.url) as hub,
        Resolver(
            "staging",
            manifests=FilesystemManifestStore(store),
            blobs=FilesystemBlobStore(store),
            connectors=[hub],
        ) as registry,
    ):
        report = await export_layout(registry, "team/app", ["v1", "multi"], out, referrers=True)
    assert {e.digest for e in report.entries} == {
        image.manifest.digest,
        index.manifest.digest,
        signature.manifest.digest,
    }
    check_layout(out)

    def tools() -> None:
        inspected = json.loads(skopeo("inspect", "--raw", f"oci:{out}:v1"))
        assert inspected["config"]["digest"] == str(image.manifest.config.digest)  # type: ignore[union-attr]
        details = json.loads(skopeo("inspect", f"oci:{out}:v1"))
        assert details["Digest"] == str(image.manifest.digest)
        for tag, all_images in (("v1", False), ("multi", True)):
            skopeo(
                "copy",
                *(["--all"] if all_images else []),
                "--preserve-digests",
                "--dest-tls-verify=false",
                f"oci:{out}:{tag}",
                f"docker://{upstream.address}/copied/app:{tag}",
            )
        assert _upstream_digest(upstream, "copied/app", "v1") == str(image.manifest.digest)
        assert _upstream_digest(upstream, "copied/app", "multi") == str(index.manifest.digest)
        bundle = tmp_path / "bundle"
        umoci("unpack", "--rootless", "--image", f"{out}:v1", str(bundle))
        rootfs = bundle / "rootfs"
        unpacked = sorted(p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*.bin"))
        assert unpacked == ["layer0/data.bin", "layer1/data.bin"]

    await anyio.to_thread.run_sync(tools)
    found = await OciLayoutConnector(out).referrers("team/app", subject.digest)
    assert [r.digest for r in found or []] == [signature.manifest.digest]


class _Only:
    """A manifest with no blobs of its own, in the shape push_content takes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.blobs: dict[Any, bytes] = {}
        self.manifests = {manifest.digest: manifest}
