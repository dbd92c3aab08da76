"""What a warm request costs ``dockerconnect serve``: CPU-seconds per request.

Run from the repository root (inside the project's virtualenv)::

    python benchmarks/bench_warm.py                 # 3 rounds of each request kind
    python benchmarks/bench_warm.py --profile NAME  # also py-spy the server's warm pulls

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_support import AccessLog, Puller, cpu_seconds, http_client
from bench_peer import TAG, AsgiServer, Pushed, describe

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
    return {"requests": count, "server_cpu_s": cpu, "wall_s": wall}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="per round (pulls: / 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", metavar="NAME", help="py-spy the server: warm_NAME.*")
    parser.add_argument("--label", default="", help="named in the results")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    try:
        with DistributionRegistry(root=scratch / "upstream") as upstream:
            images = anyio.run(seed, upstream.url, args.images, MiB, random.Random(args.seed))
            server = AsgiServer(scratch / "dockerconnect", upstream.url)
            server.start()
            try:
                assert server.process is not None
                results = measure(server.url, server.process.pid, images, upstream, args)
            finally:
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write(results, args)


def measure(
    base: str,
    pid: int,
    images: list[tuple[Pushed, str]],
    upstream: DistributionRegistry,
    args: argparse.Namespace,
) -> dict[str, Any]:
    requests = requests_of(base, images)

    async def cold() -> None:
        async with http_client() as client:
            for i in range(len(images)):
                await requests["pull_tag"](client, i)

    anyio.run(cold)
    log = AccessLog(upstream.log_path)
    mark = log.mark()
    rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            count = args.requests // 10 if kind == "pull_tag" else args.requests
            rounds[kind].append(anyio.run(one_round, pid, requests[kind], count))
    upstream_requests = len(log.since(mark))
    if args.profile:
        out = args.output / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        for kind, suffix in (("pull_tag", ""), ("manifest_tag", "_manifest")):
            count = args.requests // 5 if kind == "pull_tag" else 4 * args.requests
            name = f"{args.profile}{suffix}"
            raw = out / f"warm_{name}.collapsed"
            profile(pid, raw, lambda k=kind, c=count: anyio.run(one_round, pid, requests[k], c))
            (out / f"warm_{name}.txt").write_text(top_table(raw.read_text()))
    summary: dict[str, Any] = {}
    for kind, runs in rounds.items():
        summary[kind] = {
            "ops_per_cpu_s": _median_range([r["requests"] / r["server_cpu_s"] for r in runs]),
            "ops_per_s": _median_range([r["requests"] / r["wall_s"] for r in runs]),
            "rounds": runs,
        }
    return {"label": args.label, "upstream_requests_warm": upstream_requests, "kinds": summary}


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "warm.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# warm requests to dockerconnect serve {results['label']}".rstrip(),
        "",
        f"upstream requests during the warm rounds: {results['upstream_requests_warm']}",
        "",
        "| request | per server CPU-second (median, range) | per second (median, range) |",
        "|---|---|---|",
    ]
    for kind, row in results["kinds"].items():
        cpu, wall = row["ops_per_cpu_s"], row["ops_per_s"]
        lines.append(
            f"| {kind} | {cpu['median']:.0f} ({cpu['min']:.0f}-{cpu['max']:.0f}) "
            f"| {wall['median']:.0f} ({wall['min']:.0f}-{wall['max']:.0f}) |"
        )
    text = "\n".join(lines) + "\n"
    (args.output / "warm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
