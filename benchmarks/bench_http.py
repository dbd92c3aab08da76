"""HttpConnector blob download throughput and memory, side by side with plain httpx.

Run from the repository root::

    python benchmarks/bench_http.py            # a 256 MiB blob, 7 repetitions
    python benchmarks/bench_http.py --quick    # a 16 MiB blob, 3 repetitions (CI)

One real ``docker-registry`` (CNCF distribution, Debian's package) is started
on 127.0.0.1 with storage in a temporary directory; one blob of random bytes
is pushed into it. Then, alternating in one process on one event loop:

- **baseline**: ``httpx.AsyncClient.stream("GET", …/blobs/<digest>)``,
  ``aiter_bytes(CHUNK_SIZE)``, ``hashlib.sha256().update`` inline on each
  chunk, digest compared at the end: the least a verifying client does.
- **HttpConnector**: ``open_blob`` and iterate the ``BlobStream`` (digest and
  size verified as it streams, hashing in a worker thread, last chunk held
  back until verified, resumable).
- **Resolver(HttpConnector)**: the README's setup, a ``Resolver`` over an
  ``HttpConnector`` with the default ``verify_blobs=True``, relaying
  (``cache_blobs=False``, so every run goes upstream): the resolver verifies
  each blob and the connector's stream is told so
  (``BlobStream.defer_verification``), so each byte is hashed once.

``--hostile`` measures instead what the hostile-input trial (issue 11) asked
for, against our own hostile registry on 127.0.0.1 (``tests/http/_hostile.py``):

- the time for a ``Resolver`` to get a blob from a second connector (the
  real registry) when the first trickles its headers, against the deadline
  set (``Limits.deadline``);
- the peak RSS growth of one ``tags()`` call against a paginator serving 150
  pages of 4 MiB, each linking to a fresh next page.

``DOCKERCONNECT_SRC=/path/to/src`` runs either against another checkout
(``main``, for the "before" figures).

Each figure is the median of the repetitions; the ratio is HttpConnector's
throughput over the baseline's (target >= 0.9). Peak memory is measured in
one extra, untimed download of each under ``tracemalloc`` (Python
allocations): it must be a few chunks, not the blob. Results go to
``benchmarks/results/http.json`` and ``http.md`` (``--quick``: a temporary
directory unless ``--output`` is given).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, os.environ.get("DOCKERCONNECT_SRC") or str(Path(__file__).parents[1] / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests" / "http"))

from dockerconnect import CachingPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect._digest import Digest
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.http import HttpConnector
from dockerconnect.testing import DistributionRegistry

_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
REPOSITORY = "bench/http"


async def upload(base: str, data: bytes, digest: Digest) -> None:
    """Monolithic blob upload (distribution-spec "Pushing a blob monolithically")."""
    async with httpx.AsyncClient(timeout=300) as client:
        started = await client.post(f"{base}/v2/{REPOSITORY}/blobs/uploads/")
        started.raise_for_status()
        location = started.url.join(started.headers["location"])
        done = await client.put(
            location.copy_merge_params({"digest": str(digest)}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        done.raise_for_status()


async def baseline(client: httpx.AsyncClient, url: str, digest: Digest) -> int:
    hasher = hashlib.sha256()
    total = 0
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes(CHUNK_SIZE):
            hasher.update(chunk)
            total += len(chunk)
    if hasher.hexdigest() != digest.hex:
        raise SystemExit("baseline: digest mismatch")
    return total


async def connector_download(connector: HttpConnector, digest: Digest) -> int:
    stream = await connector.open_blob(REPOSITORY, digest)
    if stream is None:
        raise SystemExit("HttpConnector: blob not found")
    total = 0
    async with stream:
        async for chunk in stream:
            total += len(chunk)
    return total


async def resolver_download(resolver: Resolver, digest: Digest) -> int:
    total = 0
    async with await resolver.open_blob(REPOSITORY, digest) as stream:
        async for chunk in stream:
            total += len(chunk)
    return total


async def peak_memory(run: Callable[[], Awaitable[int]]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        await run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def main(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size * MiB
    async with DistributionRegistry() as registry:
        # random.randbytes cannot make 256 MiB at once; the OS can.
        data = os.urandom(size)
        digest = Digest.from_bytes(data)
        await upload(registry.url, data, digest)
        del data
        gc.collect()
        url = f"{registry.url}/v2/{REPOSITORY}/blobs/{digest}"
        timings: dict[str, list[float]] = {
            "baseline": [],
            "HttpConnector": [],
            "Resolver(HttpConnector)": [],
        }
        async with (
            httpx.AsyncClient(timeout=120) as client,
            HttpConnector(registry.url) as conn,
            HttpConnector(registry.url) as upstream,
            Resolver(
                "bench",
                manifests=MemoryManifestStore(),
                blobs=MemoryBlobStore(),
                connectors=[upstream],
                policy=CachingPolicy(cache_blobs=False),
            ) as resolver,
        ):
            runs: dict[str, Callable[[], Awaitable[int]]] = {
                "baseline": lambda: baseline(client, url, digest),
                "HttpConnector": lambda: connector_download(conn, digest),
                "Resolver(HttpConnector)": lambda: resolver_download(resolver, digest),
            }
            for name, run in runs.items():  # warm-up: connections, page cache
                assert await run() == size, name
            for _ in range(args.repetitions):
                for name, run in runs.items():
                    started = time.perf_counter()
                    got = await run()
                    timings[name].append(time.perf_counter() - started)
                    assert got == size
            peaks = {name: await peak_memory(run) for name, run in runs.items()}
    rows = {}
    for name, samples in timings.items():
        median = statistics.median(samples)
        rows[name] = {
            "median_s": median,
            "min_s": min(samples),
            "max_s": max(samples),
            "throughput_MBps": size / median / 1e6,
            "peak_traced_MiB": peaks[name] / MiB,
            "samples_s": samples,
        }
    ratio = rows["HttpConnector"]["throughput_MBps"] / rows["baseline"]["throughput_MBps"]
    resolver_ratio = (
        rows["Resolver(HttpConnector)"]["throughput_MBps"] / rows["baseline"]["throughput_MBps"]
    )
    return {
        "blob_MiB": args.size,
        "repetitions": args.repetitions,
        "chunk_size": CHUNK_SIZE,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "httpx": httpx.__version__,
        "results": rows,
        "ratio": ratio,
        "resolver_ratio": resolver_ratio,
        "target_ratio": 0.9,
    }


TRICKLE_DEADLINE = 2.0
#: A run that has not finished after this long is reported as "still waiting".
TRICKLE_CAP = 30.0
HOSTILE_PAGES = 150


async def trickle_failover(size: int) -> dict[str, Any]:
    """Time for a Resolver to get a blob from the second connector when the first trickles."""
    from _hostile import Hostile, serving

    try:
        from dockerconnect.http import Limits

        limits: dict[str, Any] = {"limits": Limits(deadline=TRICKLE_DEADLINE)}
    except ImportError:  # a checkout from before deadlines existed
        limits = {}
    async with DistributionRegistry() as registry:
        data = os.urandom(size)
        digest = Digest.from_bytes(data)
        await upload(registry.url, data, digest)
        async with (
            serving(Hostile("trickle_headers", interval=0.5)) as hostile,
            HttpConnector(hostile.url, name="trickling", **limits) as slow,
            HttpConnector(registry.url, name="healthy") as good,
            Resolver(
                "bench",
                manifests=MemoryManifestStore(),
                blobs=MemoryBlobStore(),
                connectors=[slow, good],
                policy=CachingPolicy(cache_blobs=False),
            ) as resolver,
        ):
            started = time.perf_counter()
            got = 0
            with anyio.move_on_after(TRICKLE_CAP):
                got = await resolver_download(resolver, digest)
            elapsed = time.perf_counter() - started
    return {
        "deadline_s": TRICKLE_DEADLINE if limits else None,
        "seconds": elapsed,
        "completed": got == size,
        "blob_MiB": size / MiB,
    }


def tags_rss(url: str) -> dict[str, Any]:
    """One tags() call against the hostile paginator: peak RSS growth and outcome."""
    import resource

    async def call() -> str:
        async with HttpConnector(url) as connector:
            try:
                names = await connector.tags("hostile/app")
            except Exception as exc:  # the outcome is what is measured
                return f"{type(exc).__name__}: {str(exc)[:120]}"
            return f"{len(names or [])} names"

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    outcome = anyio.run(call)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rss_growth_MiB": (peak - before) / 1024,
        "seconds": time.perf_counter() - started,
        "outcome": outcome,
    }


def hostile_rows(sources: dict[str, str], size: int) -> dict[str, Any]:
    """Both hostile measurements, for each checkout in ``sources`` (label -> src dir)."""
    import subprocess

    server = subprocess.Popen(
        [
            sys.executable,
            str(_ROOT / "tests" / "http" / "_hostile.py"),
            "pages",
            f"last_page={HOSTILE_PAGES}",
            f"page_bytes={4 * MiB - 64 * 1024}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        rows: dict[str, Any] = {}
        for label, src in sources.items():
            env = {**os.environ, "DOCKERCONNECT_SRC": src}
            script = [sys.executable, str(Path(__file__).resolve())]
            rss = subprocess.run(
                [*script, "--tags-rss", url], env=env, capture_output=True, text=True, check=True
            )
            trickle = subprocess.run(
                [*script, "--trickle", str(size)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rows[label] = {
                "tags": json.loads(rss.stdout.splitlines()[-1]),
                "trickle": json.loads(trickle.stdout.splitlines()[-1]),
            }
    finally:
        server.terminate()
        server.wait()
    return rows


def hostile_markdown(rows: dict[str, Any]) -> str:
    lines = [
        "# HttpConnector against a hostile upstream (127.0.0.1)",
        "",
        f"One `tags()` call against a paginator serving {HOSTILE_PAGES} pages of 4 MiB, "
        "each linking to a fresh next page:",
        "",
        "| checkout | peak RSS growth MiB | seconds | outcome |",
        "|---|---:|---:|---|",
    ]
    for label, row in rows.items():
        t = row["tags"]
        lines.append(
            f"| {label} | {t['rss_growth_MiB']:.0f} | {t['seconds']:.1f} | {t['outcome']} |"
        )
    lines += [
        "",
        "A Resolver gets a blob when its first connector trickles headers (1 byte per "
        "0.5 s) and its second is the real registry:",
        "",
        "| checkout | deadline s | seconds to the blob | got it |",
        "|---|---:|---:|---|",
    ]
    for label, row in rows.items():
        t = row["trickle"]
        deadline = "none" if t["deadline_s"] is None else f"{t['deadline_s']:g}"
        got = "yes" if t["completed"] else f"no: still waiting after {TRICKLE_CAP:g} s"
        lines.append(f"| {label} | {deadline} | {t['seconds']:.2f} | {got} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# HttpConnector download: {result['blob_MiB']} MiB blob from local docker-registry",
        "",
        f"Median of {result['repetitions']} runs, Python {result['python']}, "
        f"httpx {result['httpx']}, chunk {result['chunk_size'] // 1024} KiB.",
        "",
        "| client | median s | MB/s | peak traced MiB |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        lines.append(
            f"| {name} | {row['median_s']:.3f} | {row['throughput_MBps']:.0f} "
            f"| {row['peak_traced_MiB']:.1f} |"
        )
    lines += [
        "",
        f"Throughput ratio HttpConnector / baseline: **{result['ratio']:.2f}** "
        f"(target >= {result['target_ratio']}); Resolver(HttpConnector) / baseline: "
        f"**{result['resolver_ratio']:.2f}**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 16 MiB blob, 3 repetitions")
    parser.add_argument("--size", type=int, default=None, help="blob size in MiB")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--output", type=Path, default=None, help="directory for results")
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="measure the hostile-upstream figures instead (see the module docs)",
    )
    parser.add_argument("--before-src", default=None, help="with --hostile: the 'before' src")
    parser.add_argument("--tags-rss", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trickle", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tags_rss is not None:
        print(json.dumps(tags_rss(args.tags_rss)))
        raise SystemExit(0)
    if args.trickle is not None:
        print(json.dumps(anyio.run(trickle_failover, args.trickle)))
        raise SystemExit(0)
    if args.hostile:
        sources = {"this checkout": str(_ROOT / "src")}
        if args.before_src:
            sources = {"before": args.before_src, **sources}
        table = hostile_markdown(hostile_rows(sources, 4 * MiB))
        print(table)
        out = args.output or Path(__file__).resolve().parent / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "http_hostile.md").write_text(table)
        raise SystemExit(0)
    args.size = args.size or (16 if args.quick else 256)
    args.repetitions = args.repetitions or (3 if args.quick else 7)
    if args.output is None:
        args.output = (
            Path(tempfile.mkdtemp(prefix="bench-http-"))
            if args.quick
            else Path(__file__).resolve().parent / "results"
        )
    result = anyio.run(main, args, backend=args.backend)
    table = markdown(result)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "http.md").write_text(table)
    print(f"results written to {args.output}")
