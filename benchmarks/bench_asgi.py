"""Warm blob serving by ``dockerconnect serve``'s application under each ASGI server.

Run from the repository root::

    python benchmarks/bench_asgi.py            # a 256 MiB blob + 5 x 1 MiB layers
    python benchmarks/bench_asgi.py --quick    # tiny sizes, one run (CI)

DESIGN's performance notes ask for warm serving to be file-to-socket where the
ASGI server offers a zero-copy path (the ``http.response.pathsend``
extension), and for the servers to be measured rather than assumed. This
benchmark does that:

1. One store (``FilesystemManifestStore`` + ``FilesystemBlobStore`` laid out
   exactly as ``dockerconnect serve --store`` lays them out) is pre-filled
   through a ``Resolver`` with no connectors: a *big* image with one raw
   256 MiB layer of ``os.urandom`` bytes, and a *small* image with five
   1 MiB layers.
2. For each server, as a subprocess on 127.0.0.1 (its own session, stopped in
   a ``finally``): uvicorn with uvloop + httptools, uvicorn with asyncio + h11,
   granian (``--interface asgi``), hypercorn. Servers that are not installed
   are skipped with a note.

   - A tiny probe app of our own (:func:`probe_app`) reports the keys of
     ``scope["extensions"]``: whether the server offers
     ``http.response.pathsend``. The registry app uses it for every whole,
     local blob when it does, so "offered" is "used" here.
   - The server's app, built as ``dockerconnect serve --store DIR`` builds
     it (:func:`registry_app`: ``dockerconnect._cli.build_app``, the store
     opened by the ASGI lifespan).
     After one untimed warm-up pull of everything:

     * **big**: sequential ``GET`` of the 256 MiB blob on one keep-alive
       connection, MiB/s, median of N;
     * **small**: 8 concurrent clients (one connection each) each pulling the
       five layers ``rounds`` times; requests/s and MiB/s, median of N.

   Every body is verified by the client: length, ``Docker-Content-Digest``
   and sha256 of the bytes (hashed inline as they arrive, as a verifying
   client must; the client runs on the same 2 cores as the server).
   Server cost comes from ``/proc``: CPU seconds (utime + stime of the
   server's whole process tree, per GiB served in each phase and in total
   over its life), and peak RSS (``VmHWM``, summed over the tree: granian
   and hypercorn serve from a worker process under a supervisor).

With ``--baseline FILE`` (an older server module with ``build_resolver`` and
``create_app``, such as the ``examples/asgi_server.py`` that preceded
``dockerconnect.asgi``), the first installed server also serves that
module's app, measured the same way, and the report puts the two side by
side.

Results go to ``benchmarks/results/asgi.json`` and ``asgi.md`` (``--quick``:
a temporary directory unless ``--output`` is given).

This file is also the module the servers import (``bench_asgi:registry_app``
and ``bench_asgi:probe_app`` factories); the store comes from the
``BENCH_ASGI_STORE`` environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

MiB = 1024 * 1024
REGISTRY_NAME = "local"
STORE_ENV = "BENCH_ASGI_STORE"
BASELINE_ENV = "BENCH_ASGI_BASELINE"
PATHSEND = "http.response.pathsend"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# -- what the servers import ---------------------------------------------------------


def load_module(path: Path) -> ModuleType:
    """A server module imported by path (``--baseline``)."""
    name = "bench_asgi_baseline_server"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _serve_args(store: Path) -> list[str]:
    return ["--store", str(store), "--log-level", "warning"]


def registry_app() -> Any:
    """The app ``dockerconnect serve --store $BENCH_ASGI_STORE`` runs.

    The ``Resolver`` is opened and closed by the ASGI lifespan.
    """
    from dockerconnect._cli import build_app, parse_serve

    store = Path(os.environ[STORE_ENV]).resolve()
    return build_app(parse_serve(_serve_args(store)))


def baseline_app() -> Any:
    """The ``--baseline`` module's app over the same store, built as its ``main()`` did."""
    module = load_module(Path(os.environ[BASELINE_ENV]))
    store = Path(os.environ[STORE_ENV]).resolve()
    resolver = module.build_resolver(store, [], name=REGISTRY_NAME)
    return module.create_app(
        resolver, upload_dir=store / "uploads", blob_path=resolver.blobs.blob_path
    )


async def _probe(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        for _ in range(2):  # startup, then shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
        return
    if scope["type"] != "http":
        return
    body = json.dumps(
        {
            "extensions": sorted(scope.get("extensions") or {}),
            "asgi": scope.get("asgi"),
            "http_version": scope.get("http_version"),
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def probe_app() -> Any:
    """A tiny ASGI app answering every request with the keys of ``scope["extensions"]``."""
    return _probe


# -- the store -------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str
    manifest_digest: str
    layers: tuple[Blob, ...]


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        for _ in range(size // MiB + 1):
            chunk = await f.read(MiB)
            if not chunk:
                return
            yield chunk


def _random_file(path: Path, size: int) -> Blob:
    """``size`` bytes of ``os.urandom`` written in 1 MiB pieces; their digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, MiB):
            piece = os.urandom(min(MiB, size - offset))
            h.update(piece)
            f.write(piece)
    return Blob(f"sha256:{h.hexdigest()}", size)


async def _push_image(
    registry: Any, scratch: Path, repository: str, tag: str, layer_sizes: list[int]
) -> Image:
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    config_blob = Blob(f"sha256:{hashlib.sha256(config).hexdigest()}", len(config))
    await registry.push_blob(repository, config, digest=config_blob.digest)
    layers = []
    for i, size in enumerate(layer_sizes):
        source = scratch / f"{repository.replace('/', '_')}-{i}"
        blob = _random_file(source, size)
        await registry.push_blob(repository, _file_chunks(source, size), digest=blob.digest)
        source.unlink()
        layers.append(blob)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers
            ],
        }
    ).encode()
    descriptor = await registry.push_manifest(
        repository, manifest, media_type=OCI_MANIFEST, tag=tag
    )
    return Image(repository, tag, str(descriptor.digest), tuple(layers))


async def fill_store(store: Path, scratch: Path, big: int, small: int) -> dict[str, Image]:
    """Push the big and small images through a connector-less Resolver over ``store``."""
    from dockerconnect._cli import build_resolver, parse_serve

    async with build_resolver(parse_serve(_serve_args(store))) as registry:
        return {
            "big": await _push_image(registry, scratch, "bench/big", "v1", [big]),
            "small": await _push_image(registry, scratch, "bench/small", "v1", [small] * 5),
        }


# -- the servers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    package: str
    requires: tuple[str, ...]
    command: Callable[[int, str], list[str]]
    notes: str

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def version(self) -> str:
        return importlib.metadata.version(self.package)


def _uvicorn(loop: str, http: str) -> Callable[[int, str], list[str]]:
    def command(port: int, factory: str) -> list[str]:
        return [
            *(sys.executable, "-m", "uvicorn", "--factory", f"bench_asgi:{factory}"),
            *("--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)),
            *("--loop", loop, "--http", http, "--lifespan", "on"),
            *("--no-access-log", "--log-level", "warning"),
        ]

    return command


def _granian(port: int, factory: str) -> list[str]:
    return [
        *(sys.executable, "-m", "granian", "--interface", "asgi", "--factory"),
        *("--working-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--no-access-log", "--log-level", "warning"),
        f"bench_asgi:{factory}",
    ]


def _hypercorn(port: int, factory: str) -> list[str]:
    return [
        *(sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}"),
        *("--workers", "1", "--log-level", "warning"),
        f"{HERE / 'bench_asgi.py'}:{factory}()",
    ]


SERVERS = (
    Server(
        "uvicorn (uvloop + httptools)",
        "uvicorn",
        ("uvicorn", "uvloop", "httptools"),
        _uvicorn("uvloop", "httptools"),
        "--loop uvloop --http httptools (what the example's loop/http='auto' picks)",
    ),
    Server(
        "uvicorn (asyncio + h11)",
        "uvicorn",
        ("uvicorn", "h11"),
        _uvicorn("asyncio", "h11"),
        "--loop asyncio --http h11",
    ),
    Server(
        "granian",
        "granian",
        ("granian",),
        _granian,
        "--interface asgi --workers 1, defaults otherwise",
    ),
    Server(
        "hypercorn",
        "hypercorn",
        ("hypercorn",),
        _hypercorn,
        "--workers 1, asyncio worker class",
    ),
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "pid (comm)": state is [0], ppid [1], utime [11], stime [12],
    # cutime [13], cstime [14] (proc(5), counting from field 3).
    return text.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system, with reaped children) of ``root``'s process tree."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_peak_rss(root: int) -> int:
    """Sum of ``VmHWM`` over ``root``'s process tree, in bytes."""
    total = 0
    for pid in process_tree(root):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


class Running:
    """One server subprocess in its own session; ``stop()`` ends it and its workers."""

    def __init__(
        self, server: Server, factory: str, store: Path, logs: Path, baseline: str = ""
    ) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            STORE_ENV: str(store),
            BASELINE_ENV: baseline,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HERE), str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        self.log_path = logs / f"{server.package}-{factory}-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            server.command(self.port, factory),
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(self.base + path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server not ready after {START_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            # Whatever is left of the session (the leader, or orphaned workers).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(STOP_TIMEOUT)
        finally:
            self._log.close()


# -- the client ------------------------------------------------------------------------


class VerificationError(AssertionError):
    pass


def _check(response: httpx.Response, blob: Blob, digest: str, size: int) -> None:
    if response.status_code != 200:
        raise VerificationError(f"GET {blob.digest}: status {response.status_code}")
    if digest != blob.digest or size != blob.size:
        raise VerificationError(
            f"GET {blob.digest}: got {size} bytes with sha256 {digest}, expected {blob.size}"
        )
    if response.headers.get("docker-content-digest") != blob.digest:
        raise VerificationError(f"GET {blob.digest}: wrong Docker-Content-Digest header")


def get_blob(client: httpx.Client, repository: str, blob: Blob) -> None:
    """One verified GET on a sync client: sha256 of the body as it arrives."""
    h = hashlib.sha256()
    size = 0
    with client.stream("GET", f"/v2/{repository}/blobs/{blob.digest}") as response:
        for chunk in response.iter_raw():
            h.update(chunk)
            size += len(chunk)
    _check(response, blob, f"sha256:{h.hexdigest()}", size)


async def aget_blob(client: httpx.AsyncClient, repository: str, blob: Blob) -> None:
    h = hashlib.sha256()
    size = 0
    async with client.stream("GET", f"/v2/{repository}/blobs/{blob.digest}") as response:
        async for chunk in response.aiter_raw():
            h.update(chunk)
            size += len(chunk)
    _check(response, blob, f"sha256:{h.hexdigest()}", size)


def check_manifest(client: httpx.Client, image: Image) -> None:
    response = client.get(
        f"/v2/{image.repository}/manifests/{image.tag}", headers={"accept": OCI_MANIFEST}
    )
    digest = f"sha256:{hashlib.sha256(response.content).hexdigest()}"
    if response.status_code != 200 or digest != image.manifest_digest:
        raise VerificationError(f"manifest {image.repository}:{image.tag}: {response.status_code}")


def raw_get(port: int, path: str, size: int) -> None:
    """One GET read with a bare socket and discarded (length checked, nothing hashed):
    the server's ceiling, with as little client work as possible."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    buf = bytearray(MiB)
    view = memoryview(buf)
    with socket.create_connection(("127.0.0.1", port), timeout=60.0) as s:
        s.sendall(request.encode())
        head = b""
        for _ in range(64):
            n = s.recv_into(view)
            head += bytes(view[:n])
            if n == 0 or b"\r\n\r\n" in head:
                break
        status, _, rest = head.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200"):
            raise VerificationError(f"raw GET {path}: {status[:40]!r}")
        got = len(rest)
        while got < size:
            n = s.recv_into(view)
            if n == 0:
                break
            got += n
    if got != size:
        raise VerificationError(f"raw GET {path}: {got} bytes, expected {size}")


async def concurrent_pull(base: str, image: Image, clients: int, rounds: int) -> float:
    """``clients`` clients, one connection each, pulling every layer ``rounds`` times."""

    async def one() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
            for _ in range(rounds):
                for layer in image.layers:
                    await aget_blob(client, image.repository, layer)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return time.perf_counter() - start


# -- one server --------------------------------------------------------------------------


def probe(server: Server, store: Path, logs: Path) -> list[str]:
    running = Running(server, "probe_app", store, logs)
    try:
        running.wait_ready("/")
        with httpx.Client(timeout=10.0) as client:
            extensions: list[str] = client.get(running.base + "/").json()["extensions"]
        return extensions
    finally:
        running.stop()


def measure(
    server: Server,
    store: Path,
    logs: Path,
    images: dict[str, Image],
    params: dict[str, Any],
    baseline: str = "",
) -> dict[str, Any]:
    row: dict[str, Any] = {"server": server.name, "version": server.version()}
    row["notes"] = server.notes
    row["extensions"] = probe(server, store, logs)
    row["pathsend"] = PATHSEND in row["extensions"]
    big, small = images["big"], images["small"]
    factory = "baseline_app" if baseline else "registry_app"
    running = Running(server, factory, store, logs, baseline)
    try:
        running.wait_ready("/v2/")
        pid = running.proc.pid
        with httpx.Client(base_url=running.base, timeout=120.0) as client:
            # Warm-up, untimed: every blob once, both manifests.
            for image in (big, small):
                check_manifest(client, image)
                for layer in image.layers:
                    get_blob(client, image.repository, layer)
            cpu = tree_cpu_seconds(pid)
            times = []
            for _ in range(params["big_runs"]):
                start = time.perf_counter()
                get_blob(client, big.repository, big.layers[0])
                times.append(time.perf_counter() - start)
            served = big.layers[0].size * len(times)
            row["big"] = {
                "runs": len(times),
                "median_s": statistics.median(times),
                "mib_s": big.layers[0].size / MiB / statistics.median(times),
                "server_cpu_s_per_gib": (tree_cpu_seconds(pid) - cpu) / (served / 1024 / MiB),
            }
        raw = []
        for _ in range(params["big_runs"]):
            start = time.perf_counter()
            raw_get(
                running.port,
                f"/v2/{big.repository}/blobs/{big.layers[0].digest}",
                big.layers[0].size,
            )
            raw.append(time.perf_counter() - start)
        row["big"]["raw_mib_s"] = big.layers[0].size / MiB / statistics.median(raw)
        clients, rounds = params["clients"], params["rounds"]
        requests = clients * rounds * len(small.layers)
        cpu = tree_cpu_seconds(pid)
        times = [
            asyncio.run(concurrent_pull(running.base, small, clients, rounds))
            for _ in range(params["small_runs"])
        ]
        served = sum(b.size for b in small.layers) * clients * rounds * len(times)
        med = statistics.median(times)
        row["small"] = {
            "runs": len(times),
            "clients": clients,
            "requests_per_run": requests,
            "median_s": med,
            "requests_s": requests / med,
            "mib_s": requests * small.layers[0].size / MiB / med,
            "server_cpu_s_per_gib": (tree_cpu_seconds(pid) - cpu) / (served / 1024 / MiB),
        }
        row["server_cpu_s"] = tree_cpu_seconds(pid)
        row["peak_rss_mib"] = tree_peak_rss(pid) / MiB
        row["processes"] = len(process_tree(pid))
        row["verified"] = True
    finally:
        running.stop()
    return row


# -- report ----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    out = [
        "# Warm blob serving: dockerconnect serve's application under each ASGI server",
        "",
        f"Python {results['machine']['python']}, {results['machine']['cpus']} CPUs; "
        f"client (httpx {results['machine']['httpx']}, sha256 of every body) "
        "and server share the machine.",
        f"**big**: sequential GET of one {sizes['big_mib']:g} MiB blob, median of "
        f"{sizes['big_runs']}; **small**: {sizes['clients']} concurrent clients x "
        f"{sizes['rounds']} rounds x 5 layers of {sizes['small_mib']:g} MiB, median of "
        f"{sizes['small_runs']}. CPU s/GiB: server process tree, per GiB served in that "
        "phase (verified GETs); big raw: the same GET read by a bare socket and discarded "
        "(length checked, no hashing), the server's ceiling. CPU s total and peak RSS "
        "(VmHWM summed over the tree) over the server's life.",
        "",
        "| server | version | pathsend | big MiB/s | big CPU s/GiB | big raw MiB/s | small req/s "
        "| small MiB/s | small CPU s/GiB | CPU s total | peak RSS MiB | verified |",
        "|---|---|:-:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    notes = []
    for row in results["servers"]:
        if row.get("skipped") or row.get("error"):
            why = row.get("skipped") or f"failed: {row['error'].splitlines()[0]}"
            out.append(f"| {row['server']} | {row.get('version') or '-'} | | | | | | | | | | |")
            notes.append(f"- {row['server']}: {why}")
            continue
        b, s = row["big"], row["small"]
        out.append(
            f"| {row['server']} | {row['version']} | {'yes' if row['pathsend'] else 'no'} "
            f"| {b['mib_s']:,.0f} | {b['server_cpu_s_per_gib']:.2f} | {b['raw_mib_s']:,.0f} "
            f"| {s['requests_s']:,.0f} | {s['mib_s']:,.0f} | {s['server_cpu_s_per_gib']:.2f} "
            f"| {row['server_cpu_s']:.1f} | {row['peak_rss_mib']:.0f} "
            f"| {'yes' if row['verified'] else 'NO'} |"
        )
    for row in results.get("baseline", []):
        new = next(r for r in results["servers"] if r["server"] == row["server"])
        out += [
            "",
            f"Side by side under {row['server']}: this server against the baseline "
            f"`{row['baseline']}`.",
            "",
            "| app | big MiB/s | big CPU s/GiB | small req/s | small MiB/s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, r in (("dockerconnect serve", new), ("baseline", row)):
            if "big" not in r:
                out.append(f"| {label} | failed | | | | |")
                continue
            b, s = r["big"], r["small"]
            out.append(
                f"| {label} | {b['mib_s']:,.0f} | {b['server_cpu_s_per_gib']:.2f} "
                f"| {s['requests_s']:,.0f} | {s['mib_s']:,.0f} | {r['peak_rss_mib']:.0f} |"
            )
    out += ["", "Server command lines:", ""]
    out += [f"- {row['server']}: {row['notes']}" for row in results["servers"]]
    if notes:
        out += ["", "Not measured:", "", *notes]
    return "\n".join(out) + "\n"


def main(args: argparse.Namespace) -> int:
    quick = args.quick
    out_dir = (
        Path(args.output)
        if args.output
        else (Path(tempfile.mkdtemp()) if quick else HERE / "results")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    params = (
        {"big": 8 * MiB, "small": 64 * 1024, "big_runs": 1, "small_runs": 1}
        | {"clients": 8, "rounds": 1}
        if quick
        else {"big": 256 * MiB, "small": MiB, "big_runs": 7, "small_runs": 5}
        | {"clients": 8, "rounds": 10}
    )
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "httpx": httpx.__version__,
        },
        "quick": quick,
        "sizes": {
            "big_mib": params["big"] / MiB,
            "small_mib": params["small"] / MiB,
            **{k: params[k] for k in ("big_runs", "small_runs", "clients", "rounds")},
        },
        "servers": [],
    }
    failed = False
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        store, scratch, logs = Path(tmp) / "store", Path(tmp) / "scratch", Path(tmp) / "logs"
        for d in (store, scratch, logs):
            d.mkdir()
        images = asyncio.run(fill_store(store, scratch, params["big"], params["small"]))
        for server in SERVERS:
            if args.only and args.only not in server.name:
                row = {"server": server.name, "skipped": f"not selected (--only {args.only})"}
                results["servers"].append({**row, "notes": server.notes})
                continue
            missing = server.missing()
            if missing:
                note = f"not installed ({', '.join(missing)}): pip install {' '.join(missing)}"
                print(f"-- {server.name}: skipped, {note}", flush=True)
                row = {"server": server.name, "skipped": note, "notes": server.notes}
                results["servers"].append(row)
                continue
            print(f"-- {server.name}", flush=True)
            try:
                row = measure(server, store, logs, images, params)
            except Exception as exc:  # report the row, fail the run at the end
                failed = True
                print(f"   FAILED: {exc!r}", file=sys.stderr, flush=True)
                row = {"server": server.name, "error": repr(exc), "verified": False}
                row["notes"] = server.notes
            results["servers"].append(row)
        measured = [r for r in results["servers"] if "big" in r]
        if args.baseline and measured:
            server = next(s for s in SERVERS if s.name == measured[0]["server"])
            print(f"-- {server.name}, baseline {args.baseline}", flush=True)
            baseline = str(Path(args.baseline).resolve())
            try:
                row = measure(server, store, logs, images, params, baseline)
            except Exception as exc:
                failed = True
                print(f"   FAILED: {exc!r}", file=sys.stderr, flush=True)
                row = {"server": server.name, "error": repr(exc), "verified": False}
            row["baseline"] = args.baseline
            results["baseline"] = [row]
    text = markdown(results)
    print(text)
    (out_dir / "asgi.json").write_text(json.dumps(results, indent=2))
    (out_dir / "asgi.md").write_text(text)
    print(f"results written to {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (CI)")
    parser.add_argument("--output", help="directory for results")
    parser.add_argument("--tmp", help="scratch directory (default: system temp)")
    parser.add_argument(
        "--baseline", metavar="FILE", help="an older server module to measure side by side"
    )
    parser.add_argument("--only", metavar="TEXT", help="measure only servers whose name has TEXT")
    sys.exit(main(parser.parse_args()))
