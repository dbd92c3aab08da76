"""Blob store throughput and ingest memory, side by side with a plain baseline.

Run from the repository root::

    python benchmarks/bench_stores.py            # 1 KiB, 1 MiB, 256 MiB; ~1 minute
    python benchmarks/bench_stores.py --quick    # tiny sizes, for CI

What is measured, all in one process on asyncio:

- **write**: ingest blobs whose bytes are already in memory, delivered in
  ``CHUNK_SIZE`` chunks, through ``ingest``/``write``/``commit`` (which
  verify the digest). The **baseline** does the least a careful copy must:
  ``hashlib.sha256`` over each chunk, ``write`` to a file, ``fsync``,
  ``os.replace`` into place, with no event loop and no thread hops. The
  filesystem store additionally ``fsync``s the directory.
- **read**: stream every blob back in chunks from a warm page cache. The
  baseline reads the same files with ``read(CHUNK_SIZE)``.
- **peak memory** while ingesting one blob from an async generator that
  makes each chunk afresh: ``tracemalloc`` peak and peak RSS growth (Linux
  ``/proc``: ``VmHWM`` reset through ``clear_refs``). The filesystem store
  must stay flat across blob sizes; the memory store holds the whole blob,
  which shows the measurement sees growth when there is any.

Small blobs are timed in batches (throughput = bytes / seconds over the
batch); each figure is the median of several repetitions. Results go to
``benchmarks/results/stores.json`` and ``stores.md`` (``--quick``: a
temporary directory unless ``--output`` is given).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect._digest import Digest
from dockerconnect._filesystem import FilesystemBlobStore
from dockerconnect._memory import MemoryBlobStore
from dockerconnect._protocols import BlobStore
from dockerconnect._stream import CHUNK_SIZE

KiB = 1024
MiB = 1024 * KiB

Blob = tuple[Digest, list[bytes]]


def label(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    return f"{size // KiB} KiB"


def make_blobs(size: int, count: int, seed: int) -> list[Blob]:
    """``count`` distinct random blobs of ``size`` bytes, pre-split into chunks."""
    blobs = []
    for i in range(count):
        data = os.urandom(size) if size else b""
        # Distinct even if urandom were not: the index is mixed in.
        data = (seed * 1000 + i).to_bytes(8, "big") + data[8:] if size >= 8 else data
        chunks = [data[p : p + CHUNK_SIZE] for p in range(0, len(data), CHUNK_SIZE)]
        blobs.append((Digest.from_bytes(data), chunks))
    return blobs


# --- the baseline: hashlib + file copy, synchronous -------------------------------------


def baseline_write(directory: Path, blobs: list[Blob]) -> None:
    for digest, chunks in blobs:
        h = hashlib.sha256()
        temp = directory / f"{digest.hex}.part"
        with open(temp, "wb", buffering=0) as file:
            for chunk in chunks:
                h.update(chunk)
                file.write(chunk)
            os.fsync(file.fileno())
        if h.hexdigest() != digest.hex:
            raise AssertionError("baseline hashed wrong bytes")
        os.replace(temp, directory / digest.hex)


def baseline_read(directory: Path, blobs: list[Blob]) -> int:
    total = 0
    for digest, _ in blobs:
        with open(directory / digest.hex, "rb", buffering=0) as file:
            while chunk := file.read(CHUNK_SIZE):
                total += len(chunk)
    return total


def baseline_clear(directory: Path, blobs: list[Blob]) -> None:
    for digest, _ in blobs:
        (directory / digest.hex).unlink(missing_ok=True)


# --- the stores ----------------------------------------------------------------------------


async def store_write(store: BlobStore, blobs: list[Blob]) -> None:
    for digest, chunks in blobs:
        async with store.ingest(digest, sum(map(len, chunks))) as writer:
            for chunk in chunks:
                await writer.write(chunk)
            await writer.commit()


async def store_read(store: BlobStore, blobs: list[Blob]) -> int:
    total = 0
    for digest, _ in blobs:
        stream = await store.open(digest)
        assert stream is not None
        async with stream:
            async for chunk in stream:
                total += len(chunk)
    return total


async def store_clear(store: BlobStore, blobs: list[Blob]) -> None:
    for digest, _ in blobs:
        await store.delete(digest)


# --- timing --------------------------------------------------------------------------------


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


async def timed(func: Callable[[], Awaitable[Any]]) -> float:
    gc.collect()
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


async def measure_size(
    size: int, count: int, repeats: int, workdir: Path
) -> dict[str, dict[str, list[float]]]:
    """MiB/s samples: ``{operation: {backend: [samples]}}``."""
    samples: dict[str, dict[str, list[float]]] = {"write": {}, "read": {}}
    nbytes = size * count
    base_dir = workdir / f"baseline-{size}"
    base_dir.mkdir()
    stores: dict[str, BlobStore] = {
        "memory": MemoryBlobStore(),
        "filesystem": FilesystemBlobStore(workdir / f"fs-{size}"),
    }
    for rep in range(repeats):
        blobs = make_blobs(size, count, seed=rep)

        async def write_base(blobs: list[Blob] = blobs) -> None:
            baseline_write(base_dir, blobs)

        async def read_base(blobs: list[Blob] = blobs) -> None:
            assert baseline_read(base_dir, blobs) == nbytes

        samples["write"].setdefault("baseline", []).append(
            mib_per_s(nbytes, await timed(write_base))
        )
        samples["read"].setdefault("baseline", []).append(mib_per_s(nbytes, await timed(read_base)))
        baseline_clear(base_dir, blobs)
        for name, store in stores.items():

            async def write(store: BlobStore = store, blobs: list[Blob] = blobs) -> None:
                await store_write(store, blobs)

            async def read(store: BlobStore = store, blobs: list[Blob] = blobs) -> None:
                assert await store_read(store, blobs) == nbytes

            samples["write"].setdefault(name, []).append(mib_per_s(nbytes, await timed(write)))
            samples["read"].setdefault(name, []).append(mib_per_s(nbytes, await timed(read)))
            await store_clear(store, blobs)
        del blobs
    return samples


# --- peak memory while ingesting from a generator -------------------------------------------


def _rotations(size: int, block: bytes) -> list[int]:
    return [i * 7919 % len(block) for i in range(size // len(block))]


async def generated(size: int, block: bytes) -> AsyncIterator[bytes]:
    """``size`` bytes as fresh 1 MiB chunks, as a network source would deliver them."""
    for k in _rotations(size, block):
        await anyio.lowlevel.checkpoint()
        yield block[k:] + block[:k]


def generated_digest(size: int, block: bytes) -> Digest:
    h = hashlib.sha256()
    for k in _rotations(size, block):
        h.update(block[k:] + block[:k])
    return Digest("sha256", h.hexdigest())


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


async def peak_memory(store: BlobStore, size: int) -> dict[str, float | None]:
    block = os.urandom(CHUNK_SIZE)
    digest = generated_digest(size, block)
    gc.collect()
    can_reset = _reset_peak_rss()
    rss_before = _rss_kib("VmRSS")
    tracemalloc.start()
    tracemalloc.reset_peak()
    async with store.ingest(digest, size) as writer:
        async for chunk in generated(size, block):
            await writer.write(chunk)
        await writer.commit()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_peak = _rss_kib("VmHWM") if can_reset else None
    await store.delete(digest)
    return {
        "tracemalloc_peak_mib": traced_peak / MiB,
        "rss_growth_mib": (
            (rss_peak - rss_before) / KiB
            if rss_peak is not None and rss_before is not None
            else None
        ),
    }


# --- report --------------------------------------------------------------------------------


def rate(mib_s: float) -> str:
    return f"{mib_s:,.1f}" if mib_s < 100 else f"{mib_s:,.0f}"


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Blob store benchmark",
        "",
        f"{results['machine']} · Python {results['python']} · asyncio · "
        f"CHUNK_SIZE {label(CHUNK_SIZE)} · medians of {results['repeats']} runs "
        "(small blobs timed in batches)",
        "",
        "Throughput in MiB/s; 'vs baseline' is the store's median over the baseline's "
        "(hashlib + write + fsync + rename for writes; plain chunked reads for reads).",
        "",
        "| operation | blob size | baseline | memory | vs baseline | filesystem | vs baseline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["throughput"]:
        med = row["median_mib_s"]
        base = med["baseline"]
        lines.append(
            f"| {row['operation']} | {label(row['size'])} | {rate(base)} "
            f"| {rate(med['memory'])} | {med['memory'] / base:.2f}x "
            f"| {rate(med['filesystem'])} | {med['filesystem'] / base:.2f}x |"
        )
    lines += [
        "",
        "Peak memory while ingesting one blob from an async generator (MiB):",
        "",
        "| backend | blob size | tracemalloc peak | peak RSS growth |",
        "|---|---|---:|---:|",
    ]
    for row in results["peak_memory"]:
        rss = row["rss_growth_mib"]
        lines.append(
            f"| {row['backend']} | {label(row['size'])} | {row['tracemalloc_peak_mib']:.1f} "
            f"| {'n/a' if rss is None else f'{rss:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


async def run(quick: bool, workdir: Path) -> dict[str, Any]:
    if quick:
        plan = [(KiB, 20, 2), (64 * KiB, 4, 2), (MiB, 2, 2)]
        peak_sizes = [2 * MiB, 8 * MiB]
    else:
        plan = [(KiB, 500, 5), (MiB, 64, 5), (256 * MiB, 1, 3)]
        peak_sizes = [64 * MiB, 256 * MiB]
    throughput = []
    for size, count, repeats in plan:
        print(f"throughput: {label(size)} x {count}, {repeats} runs", file=sys.stderr)
        samples = await measure_size(size, count, repeats, workdir)
        for operation, by_backend in samples.items():
            throughput.append(
                {
                    "operation": operation,
                    "size": size,
                    "count": count,
                    "samples_mib_s": by_backend,
                    "median_mib_s": {k: statistics.median(v) for k, v in by_backend.items()},
                }
            )
    throughput.sort(key=lambda row: (row["operation"] != "write", row["size"]))
    peaks = []
    for name, make in (
        ("filesystem", lambda: FilesystemBlobStore(workdir / "peak")),
        ("memory", MemoryBlobStore),
    ):
        for size in peak_sizes:
            print(f"peak memory: {name}, {label(size)}", file=sys.stderr)
            peaks.append({"backend": name, "size": size, **await peak_memory(make(), size)})
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
        "quick": quick,
        "repeats": max(r for _, _, r in plan),
        "chunk_size": CHUNK_SIZE,
        "throughput": throughput,
        "peak_memory": peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--output", type=Path, help="where to write stores.json and stores.md")
    parser.add_argument("--workdir", type=Path, help="where the stores write (default: a temp dir)")
    args = parser.parse_args()
    output = args.output
    if output is None:
        output = (
            Path(tempfile.mkdtemp(prefix="bench-stores-out-"))
            if args.quick
            else Path(__file__).resolve().parent / "results"
        )
    workdir = Path(tempfile.mkdtemp(prefix="bench-stores-", dir=args.workdir))
    try:
        results = anyio.run(run, args.quick, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = render(results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "stores.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "stores.md").write_text(table)
    print(table)
    print(f"results written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
