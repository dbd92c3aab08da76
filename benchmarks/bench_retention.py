"""Retention under load: a bounded cache fed far more than its bound.

Run from the repository root::

    python benchmarks/bench_retention.py            # 256 MiB bound, 2 GiB of pulls
    python benchmarks/bench_retention.py --quick    # 8 MiB bound, 64 MiB (CI)

A Resolver over a ``FilesystemBlobStore`` with
``RetentionPolicy(max_bytes=256 MiB, interval=1 s)`` is fed 2 GiB of
distinct cold blob pulls (16 MiB each, generated on the fly by a synthetic
upstream, four clients at a time) while pushed blobs (32 MiB in all, half
pushed before the pulls and half during them) sit in the same store. A
sampler reads the cached bytes (every blob file in the store, minus what
was pushed) every 20 ms, and after every pull. Checked and reported:

- the largest cached size seen, against the bound plus one blob;
- pulls that failed (must be 0), and that every pulled byte was verified;
- pushed blobs read back whole afterwards (no pushed byte lost);
- prunes run, blobs removed, bytes freed, and pulls per second.

Results go to ``benchmarks/results/retention.json`` and ``retention.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect import (
    BlobStream,
    Descriptor,
    Digest,
    FilesystemBlobStore,
    Manifest,
    MemoryManifestStore,
    Resolver,
    RetentionPolicy,
)

MiB = 1024 * 1024
CHUNK = MiB


def _chunk(seed: int, index: int) -> bytes:
    return hashlib.sha256(f"{seed}:{index}".encode()).digest() * (CHUNK // 32)


class Synthetic:
    """An upstream of ``count`` distinct blobs of ``size`` bytes, made on the fly."""

    def __init__(self, count: int, size: int) -> None:
        self.name = "synthetic"
        self.size = size
        self.digests: list[Digest] = []
        self.opened = 0
        for seed in range(count):
            hasher = hashlib.sha256()
            for index in range(size // CHUNK):
                hasher.update(_chunk(seed, index))
            self.digests.append(Digest.parse("sha256:" + hasher.hexdigest()))
        self._seed = {d: i for i, d in enumerate(self.digests)}

    def serves(self, repository: str) -> bool:
        return True

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        return None

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        return None

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        if digest not in self._seed:
            return None
        return Descriptor("application/octet-stream", digest, self.size)

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        seed = self._seed.get(digest)
        if seed is None:
            return None
        self.opened += 1

        async def chunks() -> AsyncIterator[bytes]:
            first, skip = divmod(offset, CHUNK)
            for index in range(first, self.size // CHUNK):
                data = _chunk(seed, index)
                yield data[skip:] if index == first else data
                await anyio.lowlevel.checkpoint()

        return BlobStream(digest, self.size, chunks(), offset=offset, source=self.name)

    async def tags(self, repository: str) -> list[str] | None:
        return None

    async def repositories(self) -> list[str] | None:
        return None


def _held(root: Path) -> list[tuple[str, int]]:
    """The blob files under ``root``: name and size of each."""
    found = []
    for directory, _, names in os.walk(root / "blobs"):
        for name in names:
            try:
                found.append((name, os.stat(os.path.join(directory, name)).st_size))
            except FileNotFoundError:
                pass  # removed while we looked
    return found


def _cached_bytes(held: list[tuple[str, int]], pushed: dict[Digest, bytes]) -> int:
    """What of ``held`` is not pushed. Read once the walk has ended: a pushed
    blob is named before its push, so any pushed file the walk saw is named."""
    mine = {d.hex for d in pushed}
    return sum(size for name, size in held if name not in mine)


async def run(bound: int, total: int, blob: int, pushed_total: int, root: Path) -> dict[str, Any]:
    count = total // blob
    upstream = Synthetic(count, blob)
    store_root = root / "store"
    blobs = FilesystemBlobStore(store_root)
    pushed: dict[Digest, bytes] = {}
    failures: list[str] = []
    samples: list[int] = []
    policy = RetentionPolicy(max_bytes=bound, interval=1.0)
    async with Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=blobs,
        connectors=[upstream],
        retention=policy,
        spool_dir=str(root),
    ) as r:

        async def push(n: int) -> None:
            for _ in range(n):
                data = os.urandom(pushed_total // 16)
                digest = Digest.from_bytes(data)
                # Named before the push: once published, it is never counted
                # as cached, even by a sample taken before the push returns.
                pushed[digest] = data
                await r.push_blob("mine", data, digest=digest)

        def cached_now() -> int:
            return _cached_bytes(_held(store_root), pushed)

        async def sampler() -> None:
            while True:
                held = await anyio.to_thread.run_sync(_held, store_root)
                samples.append(_cached_bytes(held, pushed))  # on the loop the pushes run on
                await anyio.sleep(0.02)

        async def pull(indexes: list[int]) -> None:
            for i in indexes:
                digest = upstream.digests[i]
                try:
                    hasher = hashlib.sha256()
                    async with await r.open_blob("app", digest) as stream:
                        async for chunk in stream:
                            hasher.update(chunk)
                    if hasher.hexdigest() != digest.hex:
                        failures.append(f"{digest}: wrong bytes")
                except Exception as exc:
                    failures.append(f"{digest}: {exc!r}")
                samples.append(cached_now())

        await push(8)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            async with anyio.create_task_group() as clients:
                for c in range(4):
                    clients.start_soon(pull, list(range(c, count, 4)))
                await push(8)  # pushed while the pulls run
            tg.cancel_scope.cancel()
        elapsed = time.perf_counter() - started
        await r.wait_idle()
        final = await r.prune()
        samples.append(cached_now())
        stats = r.stats
        lost = 0
        for digest, data in pushed.items():
            stream = await blobs.open(digest)
            got = b"" if stream is None else b"".join([c async for c in stream])
            lost += 0 if got == data else len(data)
    return {
        "bound_mib": bound / MiB,
        "fed_mib": count * blob / MiB,
        "blob_mib": blob / MiB,
        "pulls": count,
        "failed_pulls": len(failures),
        "failures": failures[:5],
        "upstream_transfers": upstream.opened,
        "max_cached_mib": max(samples) / MiB,
        "limit_mib": (bound + blob) / MiB,
        "within_limit": max(samples) <= bound + blob,
        "samples": len(samples),
        "final_cached_mib": final.kept_bytes / MiB,
        "pushed_mib": sum(len(d) for d in pushed.values()) / MiB,
        "pushed_bytes_lost": lost,
        "prunes": stats.prunes,
        "blobs_removed": stats.pruned_blobs,
        "freed_mib": stats.pruned_bytes / MiB,
        "seconds": elapsed,
        "mib_per_s": count * blob / MiB / elapsed,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        ("bound", f"{result['bound_mib']:.0f} MiB"),
        (
            "fed (distinct cold pulls)",
            f"{result['fed_mib']:.0f} MiB in {result['pulls']} blobs of {result['blob_mib']:.0f} MiB",
        ),
        (
            "largest cached size sampled",
            f"{result['max_cached_mib']:.1f} MiB (limit {result['limit_mib']:.0f} MiB: bound + one blob)",
        ),
        ("samples", str(result["samples"])),
        ("within the limit at every sample", "yes" if result["within_limit"] else "**no**"),
        ("failed pulls", str(result["failed_pulls"])),
        ("upstream transfers", str(result["upstream_transfers"])),
        ("pushed", f"{result['pushed_mib']:.0f} MiB; bytes lost: {result['pushed_bytes_lost']}"),
        (
            "prunes / blobs removed / freed",
            f"{result['prunes']} / {result['blobs_removed']} / {result['freed_mib']:.0f} MiB",
        ),
        ("cached after the last prune", f"{result['final_cached_mib']:.0f} MiB"),
        ("throughput", f"{result['mib_per_s']:.0f} MiB/s ({result['seconds']:.1f} s)"),
    ]
    out = ["### A bounded cache fed far more than its bound", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out) + "\n"


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    out_dir = (
        Path(args.output)
        if args.output
        else (Path(tempfile.mkdtemp()) if quick else Path(__file__).parent / "results")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if quick:
            result = await run(8 * MiB, 64 * MiB, 2 * MiB, 4 * MiB, Path(tmp))
        else:
            result = await run(256 * MiB, 2048 * MiB, 16 * MiB, 32 * MiB, Path(tmp))
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    result["quick"] = quick
    text = markdown(result)
    print(text)
    (out_dir / "retention.json").write_text(json.dumps(result, indent=2))
    (out_dir / "retention.md").write_text(text)
    print(f"results written to {out_dir}")
    ok = result["within_limit"] and not result["failed_pulls"] and not result["pushed_bytes_lost"]
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--output", help="directory for results")
    parser.add_argument("--tmp", help="scratch directory (default: system temp)")
    sys.exit(anyio.run(main, parser.parse_args()))
