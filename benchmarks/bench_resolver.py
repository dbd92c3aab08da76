"""The Resolver's hot paths, side by side with plain baselines, in one run.

Run from the repository root::

    python benchmarks/bench_resolver.py            # 256 MiB blob; about a minute
    python benchmarks/bench_resolver.py --quick    # tiny sizes, for CI

What is measured (asyncio, one process, 2 cores shared by everything):

- **warm manifest resolution**: ``get_manifest`` by tag (fresh) and by digest,
  operations per second, over memory and filesystem stores.
- **cold stream-through**: one blob from an in-process fake upstream (1 MiB
  chunks) through a Resolver into a ``FilesystemBlobStore`` while one client
  reads it, against a plain loop over the same bytes: sha256 + write to a
  file + fsync + rename. Ratio = resolver MiB/s / baseline MiB/s.
- **fan-out**: 1, 10 and 100 concurrent readers of one cold blob: wall time,
  upstream transfers (must be 1) and peak RSS growth (``VmHWM`` reset through
  ``/proc/self/clear_refs``), which must not grow with the reader count.
- **last-access tracking**: warm reads (a 4 KiB blob opened and read, and
  a manifest by tag) over filesystem stores as shipped (each read notes a
  use in memory: ``UsageLog.touch``) against the same stores with the
  capability hidden (no tracking at all), ops/s side by side; and the time
  one batched ``flush`` takes to write the uses of 1000 distinct blobs.
- **stall failover**: the first connector answers ``open_blob`` and then
  never sends a byte (or sends 2 MiB, then nothing); the second is healthy.
  Two clients (the second 50 ms after the first, joining the same fetch)
  get the whole blob; the time each took, against the resolver's
  ``stall_timeout``.

Each figure is the median of several repetitions. Results go to
``benchmarks/results/resolver.json`` and ``resolver.md``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect import (
    BlobStream,
    Connector,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

MiB = 1024 * 1024


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cold_resolver(root: Path, connector: Connector) -> Resolver:
    """A Resolver with an empty filesystem blob store in a fresh directory under ``root``."""
    d = Path(tempfile.mkdtemp(dir=root))
    return Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=FilesystemBlobStore(d / "b"),
        connectors=[connector],
        spool_dir=str(d),
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def bench_warm_manifests(repeats: int, ops: int, root: Path) -> list[dict[str, Any]]:
    rows = []
    image = random_image(seed=1)
    for backend in ("memory", "filesystem"):
        upstream = FakeUpstream("up")
        upstream.add("app", image, tag="v1")
        if backend == "memory":
            stores: dict[str, Any] = {
                "manifests": MemoryManifestStore(),
                "blobs": MemoryBlobStore(),
            }
        else:
            d = Path(tempfile.mkdtemp(dir=root))
            stores = {
                "manifests": FilesystemManifestStore(d / "m"),
                "blobs": FilesystemBlobStore(d / "b"),
            }
        async with Resolver("local", connectors=[upstream], **stores) as r:
            await r.get_manifest("app", "v1")
            digest = str(image.manifest.digest)
            for kind, ref in (("tag", "v1"), ("digest", digest)):

                async def run(ref: str = ref) -> None:
                    for _ in range(ops):
                        await r.get_manifest("app", ref)

                times = [await timed(run) for _ in range(repeats)]
                med = statistics.median(times)
                rows.append(
                    {"backend": backend, "by": kind, "ops_per_s": ops / med, "median_s": med}
                )
    return rows


_USAGE = frozenset(
    {"mark", "touch", "flush", "cached", "remove_cached"}
    | {"mark_manifest", "touch_manifest", "cached_manifests", "remove_cached_manifest"}
)


class Untracked:
    """A store with its usage log hidden: the resolver then tracks nothing."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in _USAGE:
            raise AttributeError(name)
        return getattr(self._inner, name)


async def bench_usage_tracking(repeats: int, ops: int, root: Path) -> dict[str, Any]:
    image = random_image(seed=5, layers=1, layer_size=4096)
    layer = image.manifest.layers[0].digest
    async with AsyncExitStack() as stack:
        resolvers: dict[bool, Resolver] = {}
        for tracked in (True, False):
            d = Path(tempfile.mkdtemp(dir=root))
            upstream = FakeUpstream("up")
            upstream.add("app", image, tag="v1")
            manifests: Any = FilesystemManifestStore(d / "m")
            blobs: Any = FilesystemBlobStore(d / "b")
            if not tracked:
                manifests, blobs = Untracked(manifests), Untracked(blobs)
            r = Resolver("local", manifests=manifests, blobs=blobs, connectors=[upstream])
            resolvers[tracked] = await stack.enter_async_context(r)
            await r.get_manifest("app", "v1")
            async with await r.open_blob("app", layer) as stream:
                async for _ in stream:
                    pass
            await r.wait_idle()

        async def blob_reads(r: Resolver) -> None:
            for _ in range(ops):
                async with await r.open_blob("app", layer) as stream:
                    async for _ in stream:
                        pass

        async def manifest_reads(r: Resolver) -> None:
            for _ in range(ops):
                await r.get_manifest("app", "v1")

        times: dict[tuple[bool, str], list[float]] = {}
        for _ in range(repeats):  # alternating, so that drift hits both alike
            for name, fn in (("blob", blob_reads), ("manifest", manifest_reads)):
                for tracked, r in resolvers.items():
                    took = await timed(lambda r=r, fn=fn: fn(r))
                    times.setdefault((tracked, name), []).append(took)
        rows = [
            {
                "tracked": tracked,
                **{
                    f"{name}_ops_per_s": ops / statistics.median(times[(tracked, name)])
                    for name in ("blob", "manifest")
                },
            }
            for tracked in (True, False)
        ]
    # One batched flush: the uses of 1000 distinct held blobs.
    store = FilesystemBlobStore(Path(tempfile.mkdtemp(dir=root)) / "b")
    digests = []
    for i in range(1000):
        data = i.to_bytes(4, "big") * 16
        digest = Digest.from_bytes(data)
        async with store.ingest(digest, len(data)) as writer:
            await writer.write(data)
            await writer.commit()
        digests.append(digest)
    for i, digest in enumerate(digests):
        store.touch(digest, time.time() + i)
    flush_s = await timed(store.flush)
    return {"rows": rows, "flush_1000_s": flush_s}


def baseline_copy(data_chunks: list[bytes], path: Path, digest: Digest) -> None:
    h = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for chunk in data_chunks:
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    assert h.hexdigest() == digest.hex
    os.replace(tmp, path)


async def bench_stream_through(size: int, repeats: int, root: Path) -> dict[str, Any]:
    data = os.urandom(size)
    digest = Digest.from_bytes(data)
    chunks = [data[i : i + MiB] for i in range(0, size, MiB)]
    ours: list[float] = []
    base: list[float] = []
    for i in range(repeats):
        # Baseline: the least a careful copy does (no event loop, no threads).
        target = root / f"baseline-{i}"
        start = time.perf_counter()
        await anyio.to_thread.run_sync(baseline_copy, chunks, target, digest)
        base.append(time.perf_counter() - start)
        target.unlink()

        upstream = FakeUpstream("up", chunk_size=MiB)
        upstream.add_blob("app", data)
        async with cold_resolver(root, upstream) as r:

            async def pull(r: Resolver = r) -> None:
                async with await r.open_blob("app", digest) as stream:
                    async for _ in stream:
                        pass
                await r.wait_idle()

            ours.append(await timed(pull))
            assert await r.blobs.stat(digest) is not None
    ours_med, base_med = statistics.median(ours), statistics.median(base)
    return {
        "size_mib": size / MiB,
        "resolver_mib_s": size / MiB / ours_med,
        "baseline_mib_s": size / MiB / base_med,
        "ratio": base_med / ours_med,
    }


async def bench_fanout(
    size: int, readers: list[int], repeats: int, root: Path
) -> list[dict[str, Any]]:
    data = os.urandom(size)
    digest = Digest.from_bytes(data)
    rows = []
    for n in readers:
        times, peaks, transfers = [], [], []
        for _ in range(repeats):
            upstream = FakeUpstream("up", chunk_size=MiB)
            upstream.add_blob("app", data)
            counted = CountingConnector(upstream)
            gc.collect()
            async with cold_resolver(root, counted) as r:

                async def reader(r: Resolver = r) -> None:
                    h = hashlib.sha256()
                    async with await r.open_blob("app", digest) as stream:
                        async for chunk in stream:
                            h.update(chunk)
                    assert h.hexdigest() == digest.hex

                async def everyone(r: Resolver = r, n: int = n) -> None:
                    async with anyio.create_task_group() as tg:
                        for _ in range(n):
                            tg.start_soon(reader)

                before = current_rss()
                reset_peak_rss()
                times.append(await timed(everyone))
                peaks.append(max(0, peak_rss() - before))
                transfers.append(counted.calls["open_blob"])
        rows.append(
            {
                "readers": n,
                "size_mib": size / MiB,
                "median_s": statistics.median(times),
                "peak_rss_growth_mib": statistics.median(peaks) / MiB,
                "upstream_transfers": max(transfers),
            }
        )
    return rows


class Stalling(FakeUpstream):
    """Sends ``after`` bytes of a blob, then nothing ever again."""

    def __init__(self, name: str, after: int) -> None:
        super().__init__(name)
        self.after = after

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        data = self._blobs[digest]
        return BlobStream(digest, len(data), self._then_nothing(data[offset : self.after]))

    async def _then_nothing(self, head: bytes) -> Any:
        for start in range(0, len(head), MiB):
            yield head[start : start + MiB]
        await anyio.sleep(math.inf)


async def bench_stall_failover(size: int, limits: list[float], root: Path) -> list[dict[str, Any]]:
    data = os.urandom(size)
    digest = Digest.from_bytes(data)
    rows = []
    for after in (0, 2 * MiB):
        for limit in limits:
            stuck = Stalling("stuck", after)
            stuck.add_blob("app", data)
            healthy = FakeUpstream("healthy", chunk_size=MiB)
            healthy.add_blob("app", data)
            d = Path(tempfile.mkdtemp(dir=root))
            r = Resolver(
                "local",
                manifests=MemoryManifestStore(),
                blobs=FilesystemBlobStore(d / "b"),
                connectors=[stuck, healthy],
                spool_dir=str(d),
                stall_timeout=limit,
            )
            took: dict[str, float] = {}
            async with r:

                async def client(who: str, r: Resolver = r, took: dict[str, float] = took) -> None:
                    start = time.perf_counter()
                    async with await r.open_blob("app", digest) as stream:
                        h = hashlib.sha256()
                        async for chunk in stream:
                            h.update(chunk)
                    assert h.hexdigest() == digest.hex
                    took[who] = time.perf_counter() - start

                async with anyio.create_task_group() as tg:
                    tg.start_soon(client, "first")
                    await anyio.sleep(0.05)
                    tg.start_soon(client, "joining")
                assert r.stats.stalls["stuck"] == 1
            rows.append(
                {
                    "stalls_after_mib": after / MiB,
                    "stall_timeout_s": limit,
                    "first_client_s": took["first"],
                    "joining_client_s": took["joining"],
                    "size_mib": size / MiB,
                }
            )
    return rows


def markdown(results: dict[str, Any]) -> str:
    out = ["### Warm manifest resolution", "", "| store | by | ops/s |", "|---|---|---:|"]
    for row in results["warm_manifests"]:
        out.append(f"| {row['backend']} | {row['by']} | {row['ops_per_s']:,.0f} |")
    s = results["stream_through"]
    out += [
        "",
        f"### Cold stream-through of a {s['size_mib']:.0f} MiB blob into the filesystem store",
        "",
        "| path | MiB/s |",
        "|---|---:|",
        f"| Resolver (fake upstream -> client + FilesystemBlobStore) | {s['resolver_mib_s']:.0f} |",
        f"| baseline (sha256 + write + fsync + rename) | {s['baseline_mib_s']:.0f} |",
        f"| **ratio** | **{s['ratio']:.2f}** |",
        "",
        "### Fan-out: concurrent readers of one cold blob",
        "",
        "| readers | blob MiB | median s | upstream transfers | peak RSS growth MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["fanout"]:
        out.append(
            f"| {row['readers']} | {row['size_mib']:.0f} | {row['median_s']:.2f} | "
            f"{row['upstream_transfers']} | {row['peak_rss_growth_mib']:.1f} |"
        )
    u = results["usage_tracking"]
    on, off = u["rows"]
    out += [
        "",
        "### Last-access tracking (filesystem stores, warm reads)",
        "",
        "| warm read | tracked (touch, batched flush) ops/s | untracked ops/s | cost |",
        "|---|---:|---:|---:|",
    ]
    for name in ("blob", "manifest"):
        a, b = on[f"{name}_ops_per_s"], off[f"{name}_ops_per_s"]
        out.append(f"| {name} | {a:,.0f} | {b:,.0f} | {100 * (b - a) / b:+.1f}% |")
    out += ["", f"One flush of 1000 distinct uses: {u['flush_1000_s'] * 1000:.1f} ms."]
    out += [
        "",
        "### Stall failover: the first connector goes silent, the second is healthy",
        "",
        "| first source stalls after | stall_timeout s | first client s | joining client s |",
        "|---:|---:|---:|---:|",
    ]
    for row in results["stall_failover"]:
        out.append(
            f"| {row['stalls_after_mib']:.0f} MiB of {row['size_mib']:.0f} | "
            f"{row['stall_timeout_s']:.2f} | {row['first_client_s']:.2f} | "
            f"{row['joining_client_s']:.2f} |"
        )
    return "\n".join(out) + "\n"


async def main(args: argparse.Namespace) -> None:
    quick = args.quick
    out_dir = (
        Path(args.output)
        if args.output
        else (Path(tempfile.mkdtemp()) if quick else Path(__file__).parent / "results")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        results: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "quick": quick,
        }
        results["warm_manifests"] = await bench_warm_manifests(
            3 if quick else 5, 100 if quick else 2000, root
        )
        results["stream_through"] = await bench_stream_through(
            4 * MiB if quick else 256 * MiB, 2 if quick else 5, root
        )
        results["fanout"] = await bench_fanout(
            2 * MiB if quick else 64 * MiB,
            [1, 10] if quick else [1, 10, 100],
            1 if quick else 3,
            root,
        )
        results["usage_tracking"] = await bench_usage_tracking(
            3 if quick else 5, 100 if quick else 2000, root
        )
        results["stall_failover"] = await bench_stall_failover(
            4 * MiB if quick else 32 * MiB, [0.25] if quick else [0.25, 1.0, 2.0], root
        )
    text = markdown(results)
    print(text)
    (out_dir / "resolver.json").write_text(json.dumps(results, indent=2))
    (out_dir / "resolver.md").write_text(text)
    print(f"results written to {out_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--output", help="directory for results")
    parser.add_argument("--tmp", help="scratch directory (default: system temp)")
    anyio.run(main, parser.parse_args())
