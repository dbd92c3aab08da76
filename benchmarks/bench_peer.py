"""dockerconnect against CNCF distribution's pull-through proxy, on the same machine.

Run from the repository root (inside the project's virtualenv)::

    python benchmarks/bench_peer.py             # 3 runs, medians; a few minutes
    python benchmarks/bench_peer.py --runs 5    # more runs against noisy neighbours
    python benchmarks/bench_peer.py --quick     # tiny images, 1 run (CI, about a minute)
    python benchmarks/bench_peer.py --server-python /path/to/venv/bin/python

Missing ``docker-registry`` or ``skopeo`` are installed with ``apt-get`` (as
root; otherwise the script says what to install).

**Setup.** Everything runs on 127.0.0.1, sharing the machine's cores:

- *upstream*: a hosted ``docker-registry`` (Debian's CNCF distribution 2.8)
  with its access log on; every request it serves is counted from that log.
- *distribution*: a second ``docker-registry`` with ``proxy.remoteurl`` set to
  the upstream (a pull-through cache), empty filesystem storage.
- *dockerconnect*: ``dockerconnect serve`` (uvicorn, a ``Resolver`` over
  empty filesystem stores, one ``HttpConnector`` to the upstream, default
  policy: caching on, tag TTL 300 s, no eager caching). It runs as a user
  installs it: on the Python of a venv holding only what ``pip install
  '.[server]'`` installs from this checkout (``benchmarks/.server-venv``,
  built on first use and whenever ``pyproject.toml`` changes, running this
  checkout's ``src``), so development-only packages (trio, h2, rich, ...),
  which libraries import when present, do not count in its memory.
  ``--server-python PATH`` runs it on another Python; ``--quick`` (CI) on
  the benchmark's own interpreter. The results say which.
- *passthrough*: the floor of the stack (``_passthrough.py``): uvicorn with
  the same settings as ``dockerconnect serve``, on the same Python, and one
  httpx client forwarding every request to the upstream as it comes,
  streaming the answer back. It verifies nothing, stores nothing and
  shares nothing, so it asks the upstream for everything in every phase;
  what it reaches is what any proxy on this stack reaches here.
- *direct*: the upstream itself, the limit a proxy can approach.

The proxies run with their request logging off (distribution: level
``warn``, access log disabled; uvicorn: ``--log-level warning``); the
upstream logs every request at info level with its access log.

**Content**, generated from ``--seed`` (identical bytes every run):
20 images of 5 random 1 MiB gzip'd tar layers; one image of a single
256 MiB layer of raw random bytes (``layer_format="raw"``: gzip adds nothing
to random bytes but 5 s of CPU; ``random_image`` cannot draw 256 MiB at once,
so the layer is drawn in 16 MiB pieces); one image of 4 x 8 MiB layers for the
concurrency phase; a two-platform OCI index (2 x 1 MiB layers per child); and
a second small two-platform index for ``skopeo``. All are pushed to the
upstream over the registry HTTP API, except the skopeo index, which ``skopeo
copy`` pushes.

**Phases**, in this order against each target (targets take turns within
each phase; the order rotates from run to run; each run starts the proxies
afresh, so "cold" means an empty cache):

=================  ==========================================================
``cold_small``     the 20 small images by tag, one after another
``warm_tag``       the same again by tag (the tag is fresh for both proxies)
``warm_digest``    the same again by manifest digest
``big_cold``       the 256 MiB image by tag
``big_warm``       the same again
``concurrent_cold``  16 clients pulling the 4 x 8 MiB image at once, cold
``index_cold``     the index by tag, then both children with their blobs
``skopeo_cold``    ``skopeo copy --all`` of the second index into an OCI layout
=================  ==========================================================

The client (``_peer_support.Puller``, plain httpx) GETs the manifest with an
``Accept`` for the four image types and then each blob, streaming, checking
every digest and size; ``skopeo``'s copy is checked against the expected
index digest. Per phase and target: wall time; MiB/s (manifest and blob
bytes received / wall time); upstream requests by kind (ping, HEAD/GET
manifest, HEAD/GET blob) with body bytes and blob GETs beyond one per digest,
read from the slice of the upstream's log the phase wrote (each phase waits
until upstream and proxy have gone quiet, so distribution's background cache
fill is counted with the phase that caused it); and the proxy's peak RSS
(``VmHWM``, reset per phase) and CPU seconds, with the client's own CPU
seconds (this process, verifying every byte). Before each run, a file of
twice what both proxies will write is written, ``fsync``-ed and removed
(``_peer_support.warm_page_cache``), so every contender's store writes to
recycled page-cache pages alike (first-touch pages are several times slower
on a virtual machine). Timed figures are medians over
``--runs``; request counts are medians too, with their range in the JSON.

Results: ``benchmarks/results/peer.json``, ``peer.md`` and ``peer.png``
(``--quick``: a temporary directory unless ``--output`` is given).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_support import (
    AccessLog,
    PhaseRecord,
    ProcessWatch,
    Puller,
    PullTally,
    VerificationFailed,
    cpu_seconds,
    http_client,
    own_cpu_seconds,
    summarize_requests,
    wait_quiet,
    warm_page_cache,
)

from dockerconnect import OCI_MANIFEST, Descriptor, Digest, Manifest, Platform
from dockerconnect.testing import (
    DistributionRegistry,
    RandomImage,
    RandomIndex,
    push_content,
    random_image,
    random_index,
    skopeo_push,
)
from dockerconnect.testing._distribution import stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KiB = 1024
MiB = 1024 * KiB

TARGETS = ("direct", "passthrough", "distribution", "dockerconnect")
PHASES = (
    "cold_small",
    "warm_tag",
    "warm_digest",
    "big_cold",
    "big_warm",
    "concurrent_cold",
    "index_cold",
    "skopeo_cold",
)
PROXIES = ("passthrough", "distribution", "dockerconnect")
#: Where the deploy venv for ``dockerconnect serve`` is built (gitignored).
SERVER_VENV = HERE / ".server-venv"
TAG = "v1"


@dataclass(frozen=True)
class Sizes:
    small_images: int
    small_layers: int
    small_layer: int
    big_layer: int
    fan_layers: int
    fan_layer: int
    clients: int
    index_layer: int


FULL = Sizes(20, 5, MiB, 256 * MiB, 4, 8 * MiB, 16, MiB)
QUICK = Sizes(3, 2, 64 * KiB, 8 * MiB, 4, 256 * KiB, 16, 64 * KiB)


# -- content ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    """What the client needs to know about content in the upstream."""

    repository: str
    digest: str
    size: int
    manifests: int
    blobs: int


def big_image(size: int, seed: int) -> RandomImage:
    """One layer of ``size`` raw random bytes, and a valid config for it.

    ``random_image`` draws each layer with one ``Random.randbytes`` call,
    which CPython refuses at 256 MiB (the bit count overflows a C int); this
    draws the same kind of layer in 16 MiB pieces.
    """
    rng = random.Random(seed)
    piece = 16 * MiB
    layer = b"".join(rng.randbytes(min(piece, size - at)) for at in range(0, size, piece))
    layer_digest = str(Digest.from_bytes(layer))
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [f"SEED={seed}"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "layer 0"}],
    }
    config = json.dumps(config_doc, sort_keys=True).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor(
            "application/vnd.oci.image.config.v1+json", Digest.from_bytes(config), len(config)
        ).to_dict(),
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    manifest = Manifest.parse(json.dumps(doc, indent=2).encode(), OCI_MANIFEST)
    return RandomImage(manifest, config, (layer,), Platform.parse("linux/amd64"))


def describe(repository: str, content: RandomImage | RandomIndex) -> Pushed:
    return Pushed(
        repository=repository,
        digest=str(content.manifest.digest),
        size=content.size,
        manifests=len(content.manifests),
        blobs=len(content.blobs),
    )


@dataclass(frozen=True)
class Catalog:
    small: list[Pushed]
    big: Pushed
    fan: Pushed
    index: Pushed
    skopeo: Pushed


async def seed_upstream(url: str, address: str, sizes: Sizes, seed: int) -> Catalog:
    """Generate every image from ``seed`` and push it to the upstream.

    Images are generated and pushed one at a time so that at most one large
    image is held in memory.
    """
    rng = random.Random(seed)
    small = []
    async with httpx.AsyncClient(timeout=300.0) as client:
        for i in range(sizes.small_images):
            image = random_image(
                layers=sizes.small_layers, layer_size=sizes.small_layer, seed=rng.getrandbits(64)
            )
            repository = f"bench/small-{i:02d}"
            await push_content(url, repository, image, tags=[TAG], client=client)
            small.append(describe(repository, image))
        big = big_image(sizes.big_layer, rng.getrandbits(64))
        await push_content(url, "bench/big", big, tags=[TAG], client=client)
        big_pushed = describe("bench/big", big)
        del big
        gc.collect()
        fan = random_image(
            layers=sizes.fan_layers, layer_size=sizes.fan_layer, seed=rng.getrandbits(64)
        )
        await push_content(url, "bench/fan", fan, tags=[TAG], client=client)
        index = random_index(layers=2, layer_size=sizes.index_layer, seed=rng.getrandbits(64))
        await push_content(url, "bench/multi", index, tags=[TAG], client=client)
    via_skopeo = random_index(layers=2, layer_size=sizes.index_layer, seed=rng.getrandbits(64))
    await anyio.to_thread.run_sync(
        lambda: skopeo_push(address, "bench/skopeo", via_skopeo, tag=TAG)
    )
    return Catalog(
        small=small,
        big=big_pushed,
        fan=describe("bench/fan", fan),
        index=describe("bench/multi", index),
        skopeo=describe("bench/skopeo", via_skopeo),
    )


# -- the servers -------------------------------------------------------------------------


def deploy_venv(path: Path = SERVER_VENV) -> Path:
    """The Python of a virtualenv holding only what ``pip install '.[server]'``
    installs from this checkout: the server as a user installs it.

    A development venv holds packages a server install does not (trio and h2,
    which httpcore imports when present; rich and pygments, which httpx's CLI
    imports), and each of them counts in the server's resident memory. Built
    once, and again whenever ``pyproject.toml`` changes; the server still runs
    this checkout's ``src`` (``PYTHONPATH``), so code changes need no rebuild.
    """
    python = path / "bin" / "python"
    stamp = path / "pyproject.sha256"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    print(f"building the server's deploy venv in {path} (pip install '.[server]')", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{ROOT}[server]",
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def server_packages(python: str) -> list[str]:
    """``name==version`` of every distribution ``python`` can import."""
    code = (
        "import importlib.metadata as m\n"
        "print('\\n'.join(sorted({f\"{d.metadata['Name']}=={d.version}\" "
        "for d in m.distributions()}, key=str.lower)))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def ensure_tools() -> None:
    """Install Debian's ``docker-registry`` and ``skopeo`` when they are missing."""
    missing = []
    if not DistributionRegistry.available():
        missing.append("docker-registry")
    if shutil.which("skopeo") is None:
        missing.append("skopeo")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"bench_peer needs {' and '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


class QuietProxy(DistributionRegistry):
    """distribution's pull-through proxy with its request logging off, as the
    dockerconnect server runs (the upstream keeps its access log)."""

    def config(self, port: int) -> dict[str, Any]:
        config = super().config(port)
        config["log"] = {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}}
        return config


def registry_pid(registry: DistributionRegistry) -> int:
    pid = registry.pid
    if pid is None:
        raise RuntimeError(f"{registry!r} is not running")
    return pid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AsgiServer:
    """An ASGI server in a subprocess in front of ``upstream``: ``dockerconnect
    serve`` here, the passthrough in :class:`PassthroughServer`."""

    def __init__(
        self, root: Path, upstream: str, *, python: str, startup_timeout: float = 60.0
    ) -> None:
        self.root = root
        self.upstream = upstream
        self.python = python
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def command(self) -> list[str]:
        config = self.root / "serve.toml"
        config.write_text('[server]\nname = "bench"\n')
        return [
            self.python,
            "-m",
            "dockerconnect",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--store",
            str(self.root / "store"),
            "--upstream",
            self.upstream,
            "--log-level",
            "warning",
        ]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
            ),
        }

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = _free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.environment(),
                )
            if self._wait_ready():
                return
            self.stop()
            if "address already in use" not in self.log_path.read_text(errors="replace"):
                break
        raise RuntimeError(
            f"{type(self).__name__} did not come up:\n"
            f"{self.log_path.read_text(errors='replace')[-4000:]}"
        )

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/v2/", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process)


class PassthroughServer(AsgiServer):
    """``_passthrough.py`` on the same Python, uvicorn settings and process tuning as
    ``dockerconnect serve``: forwards every request, verifies and stores nothing
    (the stack's floor)."""

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "uvicorn",
            "_passthrough:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # As dockerconnect._cli.uvicorn_options has them.
            "--loop",
            "auto",
            "--http",
            "auto",
            "--ws",
            "none",
            "--lifespan",
            "on",
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(HERE), "PASSTHROUGH_UPSTREAM": self.upstream}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    pid: int | None  # the proxy's process; None for the upstream itself

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")


@contextmanager
def proxies(
    scratch: Path, upstream: DistributionRegistry, python: str
) -> Iterator[dict[str, Target]]:
    """Both proxies and the passthrough, started with empty storage, stopped and
    removed afterwards; ``dockerconnect serve`` and the passthrough run on ``python``."""
    with ExitStack() as stack:
        distribution = stack.enter_context(
            QuietProxy(proxy=upstream.url, root=scratch / "distribution")
        )
        ours = AsgiServer(scratch / "dockerconnect", upstream.url, python=python)
        floor = PassthroughServer(scratch / "passthrough", upstream.url, python=python)
        for server in (ours, floor):
            server.start()
            stack.callback(server.stop)
        assert ours.process is not None
        assert floor.process is not None
        yield {
            "direct": Target("direct", upstream.url, None),
            "passthrough": Target("passthrough", floor.url, floor.process.pid),
            "distribution": Target("distribution", distribution.url, registry_pid(distribution)),
            "dockerconnect": Target("dockerconnect", ours.url, ours.process.pid),
        }
    shutil.rmtree(scratch, ignore_errors=True)


# -- the phases --------------------------------------------------------------------------


Phase = Callable[[Target, Catalog, Sizes, Path], Awaitable[tuple[PullTally, dict[str, Any]]]]


async def _pull_each(target: Target, images: list[Pushed], *, by_digest: bool) -> PullTally:
    tally = PullTally()
    async with http_client() as client:
        puller = Puller(target.url, client)
        for image in images:
            reference = image.digest if by_digest else TAG
            tally.add(await puller.pull(image.repository, reference, expect=image.digest))
    return tally


async def phase_small_by_tag(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    return await _pull_each(target, catalog.small, by_digest=False), {}


async def phase_small_by_digest(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    return await _pull_each(target, catalog.small, by_digest=True), {}


async def phase_big(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    return await _pull_each(target, [catalog.big], by_digest=False), {}


async def phase_concurrent(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    """``sizes.clients`` clients, each with its own connections, released at once."""
    image = catalog.fan
    tally = PullTally()
    go = anyio.Event()
    clients = [http_client() for _ in range(sizes.clients)]

    async def one(client: httpx.AsyncClient) -> None:
        await go.wait()
        tally.add(await Puller(target.url, client).pull(image.repository, TAG, expect=image.digest))

    try:
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(one, client)
            await anyio.lowlevel.checkpoint()
            go.set()
    finally:
        for client in clients:
            await client.aclose()
    return tally, {"clients": sizes.clients}


async def phase_index(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    return await _pull_each(target, [catalog.index], by_digest=False), {}


async def phase_skopeo(
    target: Target, catalog: Catalog, sizes: Sizes, scratch: Path
) -> tuple[PullTally, dict[str, Any]]:
    """``skopeo copy --all`` into an OCI layout, checked against the expected digests."""
    content = catalog.skopeo
    destination = scratch / f"skopeo-{target.name}"
    shutil.rmtree(destination, ignore_errors=True)
    command = [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{target.address}/{content.repository}:{TAG}",
        f"oci:{destination}:{TAG}",
    ]
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(scratch / "skopeo-auth.json")}
    done = await anyio.run_process(command, check=False, env=env)
    if done.returncode != 0:
        raise VerificationFailed(
            f"skopeo copy from {target.name} failed ({done.returncode}):\n"
            f"{done.stderr.decode(errors='replace')}"
        )
    index = json.loads((destination / "index.json").read_text())
    got = [m["digest"] for m in index["manifests"]]
    if got != [content.digest]:
        raise VerificationFailed(f"skopeo copied {got} from {target.name}, not {content.digest}")
    stored = {p.name for p in (destination / "blobs" / "sha256").iterdir()}
    if len(stored) != content.manifests + content.blobs:
        raise VerificationFailed(f"skopeo stored {len(stored)} blobs from {target.name}")
    shutil.rmtree(destination, ignore_errors=True)
    return PullTally(content.manifests, content.blobs, content.size), {}


PHASE_RUNNERS: dict[str, Phase] = {
    "cold_small": phase_small_by_tag,
    "warm_tag": phase_small_by_tag,
    "warm_digest": phase_small_by_digest,
    "big_cold": phase_big,
    "big_warm": phase_big,
    "concurrent_cold": phase_concurrent,
    "index_cold": phase_index,
    "skopeo_cold": phase_skopeo,
}


async def run_phase(
    phase: str,
    target: Target,
    catalog: Catalog,
    sizes: Sizes,
    scratch: Path,
    log: AccessLog,
    upstream_pid: int,
) -> PhaseRecord:
    pids = [upstream_pid] if target.pid is None else [upstream_pid, target.pid]
    await wait_quiet(log, pids)
    offset = log.mark()
    watch = ProcessWatch(target.pid) if target.pid is not None else None
    upstream_cpu = cpu_seconds(upstream_pid)
    if watch is not None:
        watch.start()
    client_cpu = own_cpu_seconds()
    started = time.perf_counter()
    tally, extra = await PHASE_RUNNERS[phase](target, catalog, sizes, scratch)
    wall = time.perf_counter() - started
    client_cpu = own_cpu_seconds() - client_cpu
    pulled = watch.so_far() if watch is not None else {"cpu_s": 0.0, "main_thread_cpu_s": 0.0}
    pull_cpu = {
        "proxy_s": pulled["cpu_s"],
        "proxy_main_s": pulled["main_thread_cpu_s"],
        "upstream_s": cpu_seconds(upstream_pid) - upstream_cpu,
    }
    # distribution fills its cache in the background after answering: what it
    # asks the upstream for then belongs to this phase.
    await wait_quiet(log, pids)
    resources = watch.stop() if watch is not None else None
    upstream = summarize_requests(log.since(offset))
    return PhaseRecord(
        wall_s=wall,
        tally=tally,
        upstream=upstream,
        upstream_cpu_s=cpu_seconds(upstream_pid) - upstream_cpu,
        proxy=resources,
        client_cpu_s=client_cpu,
        pull_cpu=pull_cpu,
        extra=extra,
    )


# -- summary -------------------------------------------------------------------------------


def _numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            if key != "agents":
                out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def summarize(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per phase and target: the median of every figure, and min/max of each."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for phase in PHASES:
        summary[phase] = {}
        for target in TARGETS:
            samples = [_numbers(run[target][phase]) for run in runs]
            keys = samples[0].keys()
            summary[phase][target] = {
                "median": {k: statistics.median(s[k] for s in samples) for k in keys},
                "min": {k: min(s[k] for s in samples) for k in keys},
                "max": {k: max(s[k] for s in samples) for k in keys},
            }
    return summary


def _med(summary: dict[str, Any], phase: str, target: str, key: str) -> float:
    value: float = summary[phase][target]["median"][key]
    return value


def _range(summary: dict[str, Any], phase: str, target: str, key: str) -> str:
    low = summary[phase][target]["min"][key]
    high = summary[phase][target]["max"][key]
    return f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"


def goals(summary: dict[str, Any], catalog: Catalog, sizes: Sizes) -> list[dict[str, Any]]:
    """The issue's goals, each with both proxies' figures (and the passthrough's,
    where it has one) and whether we met it."""
    small_blobs = sum(p.blobs for p in catalog.small)
    pulls = len(catalog.small)

    def ratio(phase: str, other: str, target: str = "dockerconnect") -> float:
        ours = _med(summary, phase, target, "mib_s")
        theirs = _med(summary, phase, other, "mib_s")
        return ours / theirs if theirs else float("nan")

    def speed_goal(label: str, phase: str, other: str, wanted: float) -> dict[str, Any]:
        """Our MiB/s over ``other``'s in ``phase``, against the wanted ratio."""
        if other == "direct":
            # What distribution reached, as a ratio to direct, beside ours.
            theirs = f"{ratio(phase, 'direct') / ratio(phase, 'distribution'):.2f}"
        else:
            theirs = f"{_med(summary, phase, other, 'mib_s'):.0f} MiB/s"
        return {
            "goal": f"{label}: dockerconnect / {other} MiB/s",
            "wanted": f">= {wanted:.1f}",
            "distribution": theirs,
            "dockerconnect": f"{ratio(phase, other):.2f}",
            "passthrough": f"{ratio(phase, other, 'passthrough'):.2f}",
            "met": ratio(phase, other) >= wanted,
        }

    def rss(phase: str, target: str) -> float:
        return _med(summary, phase, target, "proxy.peak_rss_mib")

    rss_dc = rss("concurrent_cold", "dockerconnect")
    rss_dist = rss("concurrent_cold", "distribution")
    alone_dc = rss("cold_small", "dockerconnect")
    alone_dist = rss("cold_small", "distribution")
    big_dc = rss("big_cold", "dockerconnect")
    big_dist = rss("big_cold", "distribution")

    def server_errors(target: str) -> int:
        return int(sum(summary[phase][target]["max"]["server_errors"] for phase in PHASES))

    rows = [
        {
            "goal": "5xx answers to the benchmark's pulls, every phase (each retried)",
            "wanted": "0",
            "distribution": f"{server_errors('distribution')}",
            "dockerconnect": f"{server_errors('dockerconnect')}",
            "met": server_errors("dockerconnect") == 0,
        },
        {
            "goal": f"cold pull: upstream blob GETs for {small_blobs} blobs",
            "wanted": f"{small_blobs} (one per blob)",
            "distribution": _range(summary, "cold_small", "distribution", "upstream.blob_get"),
            "dockerconnect": _range(summary, "cold_small", "dockerconnect", "upstream.blob_get"),
            "met": summary["cold_small"]["dockerconnect"]["max"]["upstream.blob_get"]
            == small_blobs,
        },
        {
            "goal": f"{sizes.clients} concurrent clients: upstream blob GETs "
            f"for {catalog.fan.blobs} blobs",
            "wanted": f"{catalog.fan.blobs}",
            "distribution": _range(summary, "concurrent_cold", "distribution", "upstream.blob_get"),
            "dockerconnect": _range(
                summary, "concurrent_cold", "dockerconnect", "upstream.blob_get"
            ),
            "met": summary["concurrent_cold"]["dockerconnect"]["max"]["upstream.blob_get"]
            == catalog.fan.blobs,
        },
        {
            "goal": f"warm pulls by tag: upstream requests for {pulls} pulls",
            "wanted": "0",
            "distribution": _range(summary, "warm_tag", "distribution", "upstream.requests"),
            "dockerconnect": _range(summary, "warm_tag", "dockerconnect", "upstream.requests"),
            "met": summary["warm_tag"]["dockerconnect"]["max"]["upstream.requests"] == 0,
        },
        speed_goal("small images cold", "cold_small", "distribution", 2.0),
        speed_goal("small images cold", "cold_small", "direct", 0.8),
        speed_goal("big image cold", "big_cold", "distribution", 1.3),
        speed_goal("big image cold", "big_cold", "direct", 0.9),
        speed_goal("small images warm by tag", "warm_tag", "distribution", 2.5),
        speed_goal(f"{sizes.clients} clients cold", "concurrent_cold", "distribution", 1.5),
        speed_goal("big image warm", "big_warm", "distribution", 1.0),
        speed_goal("big image warm", "big_warm", "direct", 0.9),
        {
            "goal": f"peak RSS under {sizes.clients} clients (MiB)",
            "wanted": "<= distribution's",
            "distribution": f"{rss_dist:.0f}",
            "dockerconnect": f"{rss_dc:.0f}",
            "passthrough": f"{rss('concurrent_cold', 'passthrough'):.0f}",
            "met": rss_dc <= rss_dist,
        },
        {
            "goal": "peak RSS alone, small images cold (MiB)",
            "wanted": "<= 1.5 x distribution's",
            "distribution": f"{alone_dist:.0f}",
            "dockerconnect": f"{alone_dc:.0f}",
            "passthrough": f"{rss('cold_small', 'passthrough'):.0f}",
            "met": alone_dc <= 1.5 * alone_dist,
        },
        {
            "goal": "peak RSS growth with blob size, big cold - small cold (MiB)",
            "wanted": "<= 8",
            "distribution": f"{big_dist - alone_dist:.0f}",
            "dockerconnect": f"{big_dc - alone_dc:.0f}",
            "passthrough": f"{rss('big_cold', 'passthrough') - rss('cold_small', 'passthrough'):.0f}",
            "met": big_dc - alone_dc <= 8,
        },
    ]
    return rows


# -- report ---------------------------------------------------------------------------------


#: What ``meta["server_venv"]`` says about the Python ``dockerconnect serve`` ran on.
SERVER_KINDS = {
    "deploy": "a venv holding only what `pip install '.[server]'` installs",
    "running": "the benchmark's own interpreter (--quick), development packages included",
    "given": "given by --server-python",
}


def _shown(path: str) -> str:
    """``path`` relative to the checkout when it is inside it (the deploy venv)."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def _medians(summary: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, float]]]:
    """Each phase and target with its median figures, in table order."""
    for phase in PHASES:
        for target in TARGETS:
            yield phase, target, summary[phase][target]["median"]


def _over(mib: dict[str, float], target: str, other: str) -> float:
    """``target``'s MiB/s over ``other``'s (0 when ``other`` received nothing)."""
    return mib[target] / mib[other] if mib[other] else 0.0


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    meta = result["meta"]
    out = [
        "# dockerconnect vs distribution's pull-through proxy",
        "",
        f"`{meta['command']}` — median of {meta['runs']} run(s), {meta['date']}; "
        f"{meta['cpus']} CPUs shared by every process; Python {meta['python']}, "
        f"{meta['distribution']}, {meta['skopeo']}, uvicorn {meta['uvicorn']}.",
        "",
        f"`dockerconnect serve` ran on `{_shown(meta['server_python'])}`: "
        + SERVER_KINDS[meta["server_venv"]]
        + f" ({len(meta['server_packages'])} distributions, listed in peer.json).",
        "",
        "## Throughput (MiB/s received by the verifying client)",
        "",
        "`passthrough` is the stack's floor (`benchmarks/_passthrough.py`): uvicorn and httpx "
        "on the same Python, forwarding every request to the upstream, verifying and "
        "storing nothing. Its last column is the most a proxy on this stack reached.",
        "",
        "| phase | MiB | direct | passthrough | distribution | dockerconnect "
        "| dc / distribution | dc / direct | passthrough / direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES:
        mib = {t: _med(summary, phase, t, "mib_s") for t in TARGETS}
        size = _med(summary, phase, "direct", "bytes") / MiB
        out.append(
            f"| {phase} | {size:.1f} | {mib['direct']:.0f} | {mib['passthrough']:.0f} "
            f"| {mib['distribution']:.0f} | {mib['dockerconnect']:.0f} "
            f"| **{_over(mib, 'dockerconnect', 'distribution'):.2f}** "
            f"| {_over(mib, 'dockerconnect', 'direct'):.2f} "
            f"| {_over(mib, 'passthrough', 'direct'):.2f} |"
        )
    out += [
        "",
        "## Requests reaching the upstream (from its access log)",
        "",
        "`direct` rows are the client's own requests. Blob GETs show the range over runs; "
        "duplicates are blob GETs beyond one per digest.",
        "",
        "| phase | target | ping | HEAD manifest | GET manifest | HEAD blob | GET blob "
        "| duplicate GETs | upstream MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, target, m in _medians(summary):
        out.append(
            f"| {phase} | {target} | {m['upstream.ping']:.0f} "
            f"| {m['upstream.manifest_head']:.0f} | {m['upstream.manifest_get']:.0f} "
            f"| {m['upstream.blob_head']:.0f} "
            f"| {_range(summary, phase, target, 'upstream.blob_get')} "
            f"| {m['upstream.duplicate_blob_gets']:.0f} "
            f"| {m['upstream.bytes'] / MiB:.1f} |"
        )
    out += [
        "",
        "## Proxy resources per phase",
        "",
        "| phase | peak RSS MiB: passthrough | distribution | dockerconnect "
        "| CPU s: passthrough | distribution | dockerconnect | upstream CPU s (dist / dc) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES:
        f = summary[phase]["passthrough"]["median"]
        d = summary[phase]["distribution"]["median"]
        c = summary[phase]["dockerconnect"]["median"]
        out.append(
            f"| {phase} | {f['proxy.peak_rss_mib']:.0f} | {d['proxy.peak_rss_mib']:.0f} "
            f"| {c['proxy.peak_rss_mib']:.0f} | {f['proxy.cpu_s']:.2f} | {d['proxy.cpu_s']:.2f} "
            f"| {c['proxy.cpu_s']:.2f} | {d['upstream_cpu_s']:.2f} / {c['upstream_cpu_s']:.2f} |"
        )
    out += [
        "",
        "## Where the CPU went",
        "",
        "CPU seconds of each process while the pulls ran (the proxy's and the upstream's "
        "work after the last answer, such as distribution's second download, is in the "
        f"table above, not here), and how many of the {meta['cpus']} cores they kept busy. "
        "The client is the benchmark's own process, verifying every byte (and skopeo, "
        "in `skopeo_cold`). A Python proxy's event loop is its main thread: "
        "its CPU seconds near the wall time mean the loop was the bottleneck "
        "(distribution's main thread is one of Go's).",
        "",
        "| phase | target | wall s | client CPU s | proxy CPU s | proxy main thread "
        "| upstream CPU s | cores busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, target, m in _medians(summary):
        proxy, main = (
            ("", "")
            if target == "direct"
            else (f"{m['pull_cpu.proxy_s']:.2f}", f"{m['pull_cpu.proxy_main_s']:.2f}")
        )
        cpu = m["client_cpu_s"] + m["pull_cpu.proxy_s"] + m["pull_cpu.upstream_s"]
        out.append(
            f"| {phase} | {target} | {m['wall_s']:.2f} | {m['client_cpu_s']:.2f} "
            f"| {proxy} | {main} | {m['pull_cpu.upstream_s']:.2f} | {cpu / m['wall_s']:.2f} |"
        )
    out += [
        "",
        "## Goals",
        "",
        "`passthrough`: what the stack's floor reached on the same measure.",
        "",
        "| goal | wanted | distribution | dockerconnect | met | passthrough |",
        "|---|---|---:|---:|:---:|---:|",
    ]
    for row in result["goals"]:
        out.append(
            f"| {row['goal']} | {row['wanted']} | {row['distribution']} "
            f"| {row['dockerconnect']} | {'yes' if row['met'] else '**no**'} "
            f"| {row.get('passthrough', '')} |"
        )
    return "\n".join(out)


COLOURS = {
    "direct": "#9e9e9e",
    "passthrough": "#c7c7c7",
    "distribution": "#1f77b4",
    "dockerconnect": "#ff7f0e",
}


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    fig, axes = plt.subplots(2, 2, figsize=(16, 10), constrained_layout=True)
    labels = [p.replace("_", "\n") for p in PHASES]
    x = list(range(len(PHASES)))

    def bars(ax: Any, targets: tuple[str, ...], key: str, scale: float, fmt: str) -> None:
        width = 0.8 / len(targets)
        for i, target in enumerate(targets):
            values = [_med(summary, p, target, key) / scale for p in PHASES]
            offset = (i - (len(targets) - 1) / 2) * width
            drawn = ax.bar(
                [v + offset for v in x], values, width, label=target, color=COLOURS[target]
            )
            ax.bar_label(drawn, labels=[fmt.format(v) for v in values], fontsize=7, padding=1)
        ax.set_xticks(x, labels, fontsize=9)
        ax.legend(fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)

    ax = axes[0][0]
    bars(ax, TARGETS, "mib_s", 1.0, "{:.0f}")
    ax.set_title("Throughput to a verifying client (MiB/s, higher is better)")
    ax.set_ylabel("MiB/s")

    ax = axes[0][1]
    bars(ax, TARGETS, "upstream.requests", 1.0, "{:.0f}")
    ax.set_title("Requests reaching the upstream (lower is better; direct = client's own)")
    ax.set_ylabel("requests")
    ax.set_yscale("symlog", linthresh=10)

    ax = axes[1][0]
    bars(ax, TARGETS, "upstream.bytes", MiB, "{:.0f}")
    ax.set_title("Bytes sent by the upstream (MiB, lower is better)")
    ax.set_ylabel("MiB")

    ax = axes[1][1]
    bars(ax, PROXIES, "proxy.peak_rss_mib", 1.0, "{:.0f}")
    ax.set_title("Proxy peak RSS per phase (MiB, lower is better)")
    ax.set_ylabel("MiB")

    meta = result["meta"]
    fig.suptitle(
        f"dockerconnect vs distribution {meta['distribution'].split()[-1]} pull-through proxy "
        f"— median of {meta['runs']} run(s), {meta['cpus']} CPUs"
        + (" — QUICK (tiny images)" if meta["quick"] else ""),
        fontsize=13,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def _warm_size(sizes: Sizes) -> int:
    """Twice what both proxies write in one run: every store write reuses a page."""
    small = sizes.small_images * sizes.small_layers * sizes.small_layer
    fan = sizes.fan_layers * sizes.fan_layer
    return 2 * 2 * (small + sizes.big_layer + fan + 8 * sizes.index_layer)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="bench-peer-", dir=args.scratch))
    runs: list[dict[str, dict[str, Any]]] = []
    try:
        async with DistributionRegistry(root=scratch / "upstream") as upstream:
            started = time.perf_counter()
            catalog = await seed_upstream(upstream.url, upstream.address, sizes, args.seed)
            print(f"generated and pushed the images in {time.perf_counter() - started:.1f}s")
            log = AccessLog(upstream.log_path)
            upstream_pid = registry_pid(upstream)
            for run in range(args.runs):
                turn = run % len(TARGETS)
                order = TARGETS[turn:] + TARGETS[:turn]
                records: dict[str, dict[str, Any]] = {t: {} for t in TARGETS}
                took = warm_page_cache(scratch, _warm_size(sizes))
                print(f"run {run + 1}/{args.runs}: page cache warmed in {took:.1f}s", flush=True)
                with proxies(scratch / f"run-{run}", upstream, args.server_python) as targets:
                    for phase in PHASES:
                        for name in order:
                            record = await run_phase(
                                phase,
                                targets[name],
                                catalog,
                                sizes,
                                scratch,
                                log,
                                upstream_pid,
                            )
                            records[name][phase] = record.to_json()
                            up = record.upstream
                            print(
                                f"run {run + 1}/{args.runs} {phase:16} {name:14}"
                                f" {record.wall_s:7.2f}s {records[name][phase]['mib_s']:7.0f} MiB/s"
                                f"  upstream: {up['requests']:4} req,"
                                f" {up['blob_get']:3} blob GETs,"
                                f" {up['bytes'] / MiB:7.1f} MiB"
                                + _errors_note(record.tally.server_errors),
                                flush=True,
                            )
                runs.append(records)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize(runs)
    packages = server_packages(args.server_python)

    def version_of(name: str) -> str:
        found = [p.split("==", 1)[1] for p in packages if p.split("==")[0].lower() == name]
        return found[0] if found else "?"

    meta = {
        "command": "python benchmarks/bench_peer.py"
        + (" --quick" if args.quick else "")
        + (f" --runs {args.runs}" if args.runs != (1 if args.quick else 3) else "")
        + (f" --server-python {args.server_python}" if args.server_venv == "given" else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": args.runs,
        "seed": args.seed,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "uvicorn": version_of("uvicorn"),
        "httpx": version_of("httpx"),
        "server_python": args.server_python,
        "server_venv": args.server_venv,
        "server_packages": packages,
        "distribution": _version([DistributionRegistry().binary, "--version"]),
        "skopeo": _version(["skopeo", "--version"]),
        "sizes": sizes.__dict__,
    }
    images = {
        "small": [p.__dict__ for p in catalog.small],
        "big": catalog.big.__dict__,
        "concurrent": catalog.fan.__dict__,
        "index": catalog.index.__dict__,
        "skopeo": catalog.skopeo.__dict__,
    }
    return {
        "meta": meta,
        "images": images,
        "phases": list(PHASES),
        "targets": list(TARGETS),
        "summary": summary,
        "goals": goals(summary, catalog, sizes),
        "runs": runs,
    }


def _errors_note(server_errors: int) -> str:
    return f"  ({server_errors} answers 5xx, retried)" if server_errors else ""


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny images, one run (CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs to take medians of")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated images")
    parser.add_argument("--output", type=Path, default=None, help="directory for results")
    parser.add_argument("--scratch", default=None, help="directory for storage (default: temp)")
    parser.add_argument(
        "--server-python",
        default=None,
        metavar="PATH",
        help="the Python that runs dockerconnect serve (default: a deploy venv built in "
        "benchmarks/.server-venv; --quick: this interpreter)",
    )
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    if args.server_python is not None:
        args.server_venv = "given"
    elif args.quick:
        args.server_python, args.server_venv = sys.executable, "running"
    else:
        args.server_python, args.server_venv = str(deploy_venv()), "deploy"
    if args.output is None:
        args.output = (
            Path(tempfile.mkdtemp(prefix="bench-peer-out-")) if args.quick else HERE / "results"
        )
    plot = _have_matplotlib()
    if not plot and not args.quick:
        raise SystemExit("bench_peer needs matplotlib for its chart: pip install matplotlib")
    ensure_tools()
    result = anyio.run(main, args)
    table = markdown(result)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "peer.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "peer.md").write_text(table)
    if plot:
        chart(result, args.output / "peer.png")
        if args.output == HERE / "results":
            # The docs show the latest full run's chart beside its table.
            docs_image = HERE.parent / "docs" / "img" / "peer.png"
            docs_image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.output / "peer.png", docs_image)
    else:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
    print(f"results written to {args.output}")
