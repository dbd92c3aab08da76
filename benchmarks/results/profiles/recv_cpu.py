"""CPU seconds of one process to receive a 256 MiB blob through ``HttpConnector``
from a local ``docker-registry``, as the resolver's pump does (verification
deferred to the flight), with httpcore's socket read size varied.

    python benchmarks/results/profiles/recv_cpu.py [--reads 262144,1048576] [--repeat 5]

Prints the median CPU seconds (user + system of this process) per pull for
each read size, and for hashing the same bytes alone, side by side in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "src"))
sys.path.insert(0, str(HERE.parent.parent))

import bench_peer as bp  # noqa: E402
from httpcore._async.http11 import AsyncHTTP11Connection  # noqa: E402

from dockerconnect import (  # noqa: E402
    Digest,
    FilesystemBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect.http import HttpConnector  # noqa: E402
from dockerconnect.testing import push_content  # noqa: E402

MiB = 1024 * 1024


def cpu() -> float:
    times = os.times()
    return times.user + times.system


async def pull(connector: HttpConnector, digest: Digest) -> tuple[float, int]:
    started = cpu()
    stream = await connector.open_blob("bench/big", digest)
    assert stream is not None
    stream.defer_verification()
    got = 0
    chunks = 0
    async with stream:
        async for chunk in stream:
            got += len(chunk)
            chunks += 1
    assert got == stream.size
    return cpu() - started, chunks


async def through_resolver(url: str, digest: Digest, root: Path) -> float:
    """CPU seconds of a cold pull through a Resolver into a filesystem store,
    read to the end and committed (what the server does, minus HTTP serving)."""
    started = cpu()
    async with Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=FilesystemBlobStore(root),
        connectors=[HttpConnector(url, name="up")],
    ) as resolver:
        stream = await resolver.open_blob("bench/big", digest)
        async with stream:
            async for _ in stream:
                pass
        await resolver.wait_idle()
    return cpu() - started


async def main(args: argparse.Namespace) -> None:
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="recv-cpu-"))
    async with bp.DistributionRegistry(root=scratch / "upstream") as upstream:
        image = bp.big_image(256 * MiB, 1)
        await push_content(upstream.url, "bench/big", image, tags=["v1"])
        layer = image.manifest.layers[0].digest
        data = image.layers[0]
        del image
        rows: dict[str, list[float]] = {}
        sizes = [int(s) for s in args.reads.split(",")]
        for _ in range(args.repeat):
            for size in sizes:
                AsyncHTTP11Connection.READ_NUM_BYTES = size
                async with HttpConnector(upstream.url, name="up") as connector:
                    used, chunks = await pull(connector, layer)
                rows.setdefault(f"read {size // 1024} KiB ({chunks} chunks)", []).append(used)
            root = scratch / f"store-{len(rows.get('resolver', []))}"
            used = await through_resolver(upstream.url, layer, root)
            rows.setdefault("resolver", []).append(used)
            shutil.rmtree(root, ignore_errors=True)
            started = time.process_time()
            hasher = hashlib.sha256()
            for at in range(0, len(data), MiB):
                hasher.update(data[at : at + MiB])
            rows.setdefault("sha256 of 256 MiB alone", []).append(time.process_time() - started)
    for name, values in rows.items():
        print(f"{name:34} median {statistics.median(values):.3f} CPU-s"
              f" (min {min(values):.3f}, max {max(values):.3f})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", default=f"{256 * 1024},{1024 * 1024}")
    parser.add_argument("--repeat", type=int, default=5)
    anyio.run(main, parser.parse_args())
