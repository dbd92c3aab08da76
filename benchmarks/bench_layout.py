"""Exporting cached images as an OCI layout: hard links against a plain copy.

Run from the repository root::

    python benchmarks/bench_layout.py            # 1 GiB of images; about a minute
    python benchmarks/bench_layout.py --quick    # 16 MiB, for CI

Setup: a :class:`~dockerconnect.Resolver` over filesystem stores holds
images (pushed, so every blob is in its ``FilesystemBlobStore``) totalling
the size asked for, in layers of 64 MiB (``--quick``: 1 MiB). Then, each into
a fresh directory on the same filesystem:

- **export, hard links**: ``export_layout(...)`` as it is by default;
- **export, copy**: ``export_layout(..., hard_links=False)``: every blob
  streamed from the store, verified, written, ``fsync``-ed;
- **baseline copy**: ``shutil.copyfile`` of each blob file and ``fsync``, no
  verification and no event loop: the least a copy costs;
- **resume**: the hard-link export run again into its own directory (every
  blob already there).

Each row gives the median seconds of three runs and the bytes written
(as the export reports them; the baseline's are the files' sizes). The page
cache is warm for every row. Results go to ``benchmarks/results/layout.json``
and ``layout.md`` (``--quick``: a temporary directory unless ``--output`` is
given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect import (
    FilesystemBlobStore,
    FilesystemManifestStore,
    Resolver,
    export_layout,
)
from dockerconnect.testing import random_image

MiB = 1024 * 1024
REPOSITORY = "bench/app"
RUNS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB, for CI")
    parser.add_argument("--output", type=Path, help="where results go")
    parser.add_argument("--scratch", type=Path, help="where stores and layouts are written")
    return parser.parse_args()


async def fill(registry: Resolver, total: int, layer: int) -> list[str]:
    """Push images of two ``layer``-byte layers until ``total`` bytes; their tags."""
    tags = []
    seed = 0
    while len(tags) * 2 * layer < total:
        image = random_image(layers=2, layer_size=layer, seed=seed, layer_format="raw")
        for digest, data in image.blobs.items():
            await registry.push_blob(REPOSITORY, data, digest=digest)
        tag = f"v{seed}"
        await registry.push_manifest(
            REPOSITORY, image.manifest.data, media_type=image.manifest.media_type, tag=tag
        )
        tags.append(tag)
        seed += 1
    return tags


def baseline_copy(store: FilesystemBlobStore, out: Path) -> int:
    written = 0
    target = out / "blobs" / "sha256"
    target.mkdir(parents=True)
    for path in sorted((store.root / "blobs").rglob("*")):
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            with open(target / path.name, "rb+") as file:
                os.fsync(file.fileno())
            written += path.stat().st_size
    return written


async def timed(run: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    start = time.perf_counter()
    written = await run()
    return time.perf_counter() - start, written


async def measure(scratch: Path, total: int, layer: int) -> list[dict[str, Any]]:
    store_dir = scratch / "store"
    blobs = FilesystemBlobStore(store_dir)
    rows: dict[str, list[tuple[float, int]]] = {
        "export, hard links": [],
        "export, copy": [],
        "baseline copy (shutil, fsync)": [],
        "resume (all there)": [],
    }
    async with Resolver(
        "bench", manifests=FilesystemManifestStore(store_dir), blobs=blobs
    ) as registry:
        tags = await fill(registry, total, layer)
        for run in range(RUNS):
            linked = scratch / f"linked{run}"

            async def export_linked(out: Path = linked) -> int:
                report = await export_layout(registry, REPOSITORY, tags, out)
                assert report.linked == 3 * len(tags), report  # config and two layers
                return report.bytes_written

            async def export_copied(out: Path = scratch / f"copied{run}") -> int:
                report = await export_layout(registry, REPOSITORY, tags, out, hard_links=False)
                assert report.copied == 3 * len(tags), report  # config and two layers
                return report.bytes_written

            async def export_again(out: Path = linked) -> int:
                report = await export_layout(registry, REPOSITORY, tags, out)
                assert report.skipped == 3 * len(tags), report  # config and two layers
                return report.bytes_written

            async def baseline(out: Path = scratch / f"baseline{run}") -> int:
                return await anyio.to_thread.run_sync(baseline_copy, blobs, out)

            rows["export, hard links"].append(await timed(export_linked))
            rows["export, copy"].append(await timed(export_copied))
            rows["baseline copy (shutil, fsync)"].append(await timed(baseline))
            rows["resume (all there)"].append(await timed(export_again))
            for name in (f"copied{run}", f"baseline{run}"):
                shutil.rmtree(scratch / name)
    stored = sum(p.stat().st_size for p in (store_dir / "blobs").rglob("*") if p.is_file())
    return [
        {
            "case": case,
            "images": len(tags),
            "blob_bytes": stored,
            "seconds": statistics.median(s for s, _ in results),
            "bytes_written": statistics.median(w for _, w in results),
        }
        for case, results in rows.items()
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | images | blob bytes | seconds (median of 3) | bytes written |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['images']} | {row['blob_bytes'] / MiB:,.0f} MiB "
            f"| {row['seconds']:.3f} | {row['bytes_written']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    total, layer = (16 * MiB, 1 * MiB) if args.quick else (1024 * MiB, 64 * MiB)
    output = args.output or (
        Path(tempfile.mkdtemp(prefix="bench-layout-"))
        if args.quick
        else Path(__file__).resolve().parent / "results"
    )
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-layout-", dir=args.scratch) as tmp:
        rows = anyio.run(measure, Path(tmp), total, layer)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = (
        f"`python benchmarks/bench_layout.py{' --quick' if args.quick else ''}` on {machine}; "
        "store and layouts on one filesystem, page cache warm.\n\n" + table(rows) + "\n"
    )
    (output / "layout.json").write_text(json.dumps(rows, indent=2) + "\n")
    (output / "layout.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
