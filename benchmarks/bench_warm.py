"""What a warm request costs ``dockerconnect serve``: CPU-seconds per request.

Run from the repository root (inside the project's virtualenv)::

    python benchmarks/bench_warm.py                 # 3 rounds of each request kind
    python benchmarks/bench_warm.py --profile NAME  # also py-spy the server's warm pulls
    python benchmarks/bench_warm.py --against ../old-checkout --against-label before
    python benchmarks/bench_warm.py --quick         # 2 small images, 1 round (CI)

**Setup.** A hosted ``docker-registry`` upstream holds ``--images`` images of
five 1 MiB layers; ``dockerconnect serve`` (as ``bench_peer.py`` starts it:
a Resolver over empty filesystem stores, one ``HttpConnector``, default
policy) pulls each once, so everything after is warm. One client (httpx, one
keep-alive connection) then sends, one after another:

==================  ==========================================================
``manifest_tag``    ``GET /v2/<name>/manifests/v1`` (the tag is fresh)
``manifest_digest`` ``GET /v2/<name>/manifests/<digest>``
``blob``            ``GET /v2/<name>/blobs/<digest>`` of a 1 MiB layer, read whole
``pull_tag``        a whole pull by tag (manifest, config, five layers), verified
==================  ==========================================================

The figure is the server's own CPU time (user + system of every thread,
``/proc/PID/stat``) over the requests of one round: requests per
CPU-second, which the client's share of the cores does not change as much
as it changes wall time. Rounds are repeated (``--rounds``) and reported
as median with the range. The upstream's access log is checked to have seen
nothing during the warm rounds.

``--profile NAME`` runs ``py-spy record`` on the server during extra rounds
of ``pull_tag`` and of ``manifest_tag`` and writes, under
``benchmarks/results/profiles/``, ``warm_NAME.txt`` and
``warm_NAME_manifest.txt`` (the functions with the most samples, by own and
by total time) beside the collapsed stacks they come from
(``.collapsed``, for ``flamegraph.pl`` or speedscope).

``--against TREE`` serves a second ``dockerconnect serve`` from another
checkout's ``src`` (say the commit before a change) over the same upstream,
and each round runs on both in turn, so the two are compared under the same
load from the machine's other users.

Results: ``benchmarks/results/warm.json`` and ``warm.md`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_peer
from _peer_support import AccessLog, Puller, cpu_seconds, http_client
from bench_peer import ROOT, TAG, AsgiServer, Pushed, describe

from dockerconnect.testing import DistributionRegistry, push_content, random_image

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
KINDS = ("manifest_tag", "manifest_digest", "blob", "pull_tag")
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


async def seed(url: str, images: int, layer: int, rng: random.Random) -> list[tuple[Pushed, str]]:
    """Push the images; each with the digest of its first layer."""
    pushed = []
    async with httpx.AsyncClient(timeout=300.0) as client:
        for i in range(images):
            image = random_image(layers=5, layer_size=layer, seed=rng.getrandbits(64))
            repository = f"warm/small-{i:02d}"
            await push_content(url, repository, image, tags=[TAG], client=client)
            pushed.append((describe(repository, image), str(image.manifest.layers[0].digest)))
    return pushed


Request = Callable[[httpx.AsyncClient, int], Awaitable[None]]


def requests_of(base: str, images: list[tuple[Pushed, str]]) -> dict[str, Request]:
    async def manifest_tag(client: httpx.AsyncClient, i: int) -> None:
        image = images[i % len(images)][0]
        response = await client.get(
            f"{base}/v2/{image.repository}/manifests/{TAG}", headers={"Accept": ACCEPT}
        )
        _ok(response)

    async def manifest_digest(client: httpx.AsyncClient, i: int) -> None:
        image = images[i % len(images)][0]
        response = await client.get(
            f"{base}/v2/{image.repository}/manifests/{image.digest}", headers={"Accept": ACCEPT}
        )
        _ok(response)

    async def blob(client: httpx.AsyncClient, i: int) -> None:
        image, layer = images[i % len(images)]
        async with client.stream("GET", f"{base}/v2/{image.repository}/blobs/{layer}") as r:
            _ok(r)
            async for _ in r.aiter_raw():
                pass

    async def pull_tag(client: httpx.AsyncClient, i: int) -> None:
        image = images[i % len(images)][0]
        await Puller(base, client).pull(image.repository, TAG, expect=image.digest)

    return {
        "manifest_tag": manifest_tag,
        "manifest_digest": manifest_digest,
        "blob": blob,
        "pull_tag": pull_tag,
    }


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code}")


async def one_round(pid: int, request: Request, count: int) -> dict[str, float]:
    async with http_client() as client:
        await request(client, 0)  # the connection, before the clock
        cpu, wall = cpu_seconds(pid), time.perf_counter()
        for i in range(count):
            await request(client, i)
        wall, cpu = time.perf_counter() - wall, cpu_seconds(pid) - cpu
    # At least one clock tick (10 ms): what /proc counts in.
    return {"requests": count, "server_cpu_s": max(cpu, 0.01), "wall_s": wall}


def _median_range(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def profile(pid: int, raw: Path, run: Callable[[], None]) -> None:
    """py-spy the server while ``run`` runs, into collapsed stacks at ``raw``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        run()
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        process.wait(timeout=60)


def top_table(collapsed: str, limit: int = 30) -> str:
    """The functions with most samples, by own time and by total time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "own%   function"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in own.most_common(limit)]
    lines += ["", "total% function"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in inclusive.most_common(limit)]
    return "\n".join(lines) + "\n"


@contextmanager
def _serving_from(tree: Path) -> Iterator[None]:
    """``AsgiServer`` starts ``dockerconnect serve`` from ``tree/src`` meanwhile."""
    saved = bench_peer.ROOT
    bench_peer.ROOT = tree
    try:
        yield
    finally:
        bench_peer.ROOT = saved


@dataclass(frozen=True)
class Served:
    label: str
    url: str
    pid: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="per round (pulls: / 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--against",
        type=Path,
        metavar="TREE",
        help="also serve from TREE/src (another checkout: 'before'), rounds interleaved",
    )
    parser.add_argument("--against-label", default="", help="names TREE's server")
    parser.add_argument("--profile", metavar="NAME", help="py-spy the server: warm_NAME.*")
    parser.add_argument("--label", default="this tree", help="names this tree's server")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--quick", action="store_true", help="2 images of 64 KiB layers, 1 round (CI)"
    )
    args = parser.parse_args()
    layer = MiB
    if args.quick:
        args.images, args.requests, args.rounds, layer = 2, 50, 1, 64 * 1024

    scratch = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    try:
        with DistributionRegistry(root=scratch / "upstream") as upstream, ExitStack() as stack:
            images = anyio.run(seed, upstream.url, args.images, layer, random.Random(args.seed))
            trees = [(args.label, ROOT)]
            if args.against is not None:
                label = args.against_label or f"against ({args.against})"
                trees.insert(0, (label, args.against.resolve()))
            servers = []
            for n, (label, tree) in enumerate(trees):
                server = AsgiServer(
                    scratch / f"dockerconnect-{n}", upstream.url, python=sys.executable
                )
                with _serving_from(tree):
                    server.start()
                stack.callback(server.stop)
                assert server.process is not None
                servers.append(Served(label, server.url, server.process.pid))
            results = measure(servers, images, upstream, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write(results, args)


def measure(
    servers: list[Served],
    images: list[tuple[Pushed, str]],
    upstream: DistributionRegistry,
    args: argparse.Namespace,
) -> dict[str, Any]:
    requests = {s.label: requests_of(s.url, images) for s in servers}

    async def cold() -> None:
        async with http_client() as client:
            for server in servers:
                for i in range(len(images)):
                    await requests[server.label]["pull_tag"](client, i)

    anyio.run(cold)
    log = AccessLog(upstream.log_path)
    mark = log.mark()
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {
        s.label: {kind: [] for kind in KINDS} for s in servers
    }
    for n in range(args.rounds):
        for kind in KINDS:
            count = args.requests // 10 if kind == "pull_tag" else args.requests
            # Side by side: each server in turn, the order alternating by round.
            for server in servers if n % 2 == 0 else servers[::-1]:
                done = anyio.run(one_round, server.pid, requests[server.label][kind], count)
                rounds[server.label][kind].append(done)
    upstream_requests = len(log.since(mark))
    if args.profile:
        ours = servers[-1]
        out = args.output / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        for kind, suffix in (("pull_tag", ""), ("manifest_tag", "_manifest")):
            count = args.requests // 5 if kind == "pull_tag" else 4 * args.requests
            name = f"{args.profile}{suffix}"
            raw = out / f"warm_{name}.collapsed"
            request = requests[ours.label][kind]
            profile(ours.pid, raw, lambda r=request, c=count: anyio.run(one_round, ours.pid, r, c))
            (out / f"warm_{name}.txt").write_text(top_table(raw.read_text()))
    summary: dict[str, Any] = {}
    for label, kinds in rounds.items():
        summary[label] = {
            kind: {
                "ops_per_cpu_s": _median_range([r["requests"] / r["server_cpu_s"] for r in runs]),
                "ops_per_s": _median_range([r["requests"] / r["wall_s"] for r in runs]),
                "rounds": runs,
            }
            for kind, runs in kinds.items()
        }
    return {
        "requests_per_round": args.requests,
        "images": args.images,
        "rounds": args.rounds,
        "upstream_requests_warm": upstream_requests,
        "servers": summary,
    }


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "warm.json").write_text(json.dumps(results, indent=2) + "\n")
    servers = results["servers"]
    labels = list(servers)
    lines = [
        "# Warm requests to dockerconnect serve: server CPU-seconds per request",
        "",
        f"`python benchmarks/bench_warm.py` — {results['rounds']} rounds of "
        f"{results['requests_per_round']} requests (pulls: a tenth), servers side by side, "
        "interleaved; median (range) of the rounds.",
        f"Upstream requests during the warm rounds: {results['upstream_requests_warm']}.",
        "",
        "| request | "
        + " | ".join(f"{label}: per CPU-s" for label in labels)
        + " | "
        + " | ".join(f"{label}: per s" for label in labels)
        + " |",
        "|---|" + "---:|" * (2 * len(labels)),
    ]
    for kind in KINDS:
        cells = []
        for field in ("ops_per_cpu_s", "ops_per_s"):
            for label in labels:
                value = servers[label][kind][field]
                cells.append(f"{value['median']:.0f} ({value['min']:.0f}-{value['max']:.0f})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (args.output / "warm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
