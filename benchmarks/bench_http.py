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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect._digest import Digest
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.http import HttpConnector
from dockerconnect.testing import DistributionRegistry

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
        timings: dict[str, list[float]] = {"baseline": [], "HttpConnector": []}
        async with httpx.AsyncClient(timeout=120) as client, HttpConnector(registry.url) as conn:
            runs: dict[str, Callable[[], Awaitable[int]]] = {
                "baseline": lambda: baseline(client, url, digest),
                "HttpConnector": lambda: connector_download(conn, digest),
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
    return {
        "blob_MiB": args.size,
        "repetitions": args.repetitions,
        "chunk_size": CHUNK_SIZE,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "httpx": httpx.__version__,
        "results": rows,
        "ratio": ratio,
        "target_ratio": 0.9,
    }


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
        f"(target >= {result['target_ratio']}).",
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
    args = parser.parse_args()
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
