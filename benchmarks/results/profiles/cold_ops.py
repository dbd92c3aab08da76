"""Cold pulls through a Resolver in process (no ASGI server, no client hop):
wall and CPU seconds per cold manifest and per cold blob, for two source
trees side by side, alternating, against one local ``docker-registry``.

    python benchmarks/results/profiles/cold_ops.py --base /tmp/base/src --rounds 3

Each round runs one child per tree (``PYTHONPATH`` set to that tree's
``src``): an empty filesystem store, one ``HttpConnector``, the 20 small
images of ``bench_peer.py`` pulled by tag one after another (manifest, then
every blob read to its end), then the 256 MiB image, then ``wait_idle``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
OURS = HERE.parent.parent.parent / "src"
sys.path.insert(0, str(HERE.parent.parent))

CHILD = r"""
import json, os, sys, time, anyio
from dockerconnect import FilesystemBlobStore, FilesystemManifestStore, Resolver
from dockerconnect.http import HttpConnector

url, root, names = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if os.environ.get("COLD_OPS_NO_FSYNC"):  # diagnosis only: what the fsyncs cost
    os.fsync = lambda fd: None

def cpu():
    t = os.times()
    return t.user + t.system

async def pull(r, name):
    m0, c0 = time.perf_counter(), cpu()
    manifest = await r.get_manifest(name, "v1")
    m1, c1 = time.perf_counter(), cpu()
    for d in [manifest.config, *manifest.layers]:
        stream = await r.open_blob(name, d.digest)
        async with stream:
            async for _ in stream:
                pass
    return m1 - m0, c1 - c0, time.perf_counter() - m1, cpu() - c1

async def main():
    out = {"manifest_wall": 0.0, "manifest_cpu": 0.0, "small_blob_wall": 0.0,
           "small_blob_cpu": 0.0}
    async with Resolver("local", manifests=FilesystemManifestStore(root),
                        blobs=FilesystemBlobStore(root),
                        connectors=[HttpConnector(url, name="up")]) as r:
        for name in names[:-1]:
            mw, mc, bw, bc = await pull(r, name)
            out["manifest_wall"] += mw; out["manifest_cpu"] += mc
            out["small_blob_wall"] += bw; out["small_blob_cpu"] += bc
        mw, mc, bw, bc = await pull(r, names[-1])
        out["big_wall"], out["big_cpu"] = bw, bc
        c0 = cpu()
        await r.wait_idle()
        out["after_cpu"] = cpu() - c0
    print(json.dumps(out))

anyio.run(main)
"""


def run_child(src: str, url: str, names: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cold-ops-") as root:
        env = {**os.environ, "PYTHONPATH": src}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, url, root, json.dumps(names)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def main(args: argparse.Namespace) -> None:
    import bench_peer as bp

    scratch = Path(tempfile.mkdtemp(prefix="cold-ops-"))
    trees = {"base": args.base, "ours": str(OURS)}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    async with bp.DistributionRegistry(root=scratch / "upstream") as upstream:
        catalog = await bp.seed_upstream(upstream.url, upstream.address, bp.FULL, 7)
        names = [p.repository for p in catalog.small] + [catalog.big.repository]
        for _ in range(args.rounds):
            bp.warm_page_cache(scratch, 2 * 1024**3)
            for name, src in trees.items():
                result = await anyio.to_thread.run_sync(run_child, src, upstream.url, names)
                rows[name].append(result)
                print(name, json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    print("\nmedians over", args.rounds, "rounds (20 manifests, 120 small blobs, one 256 MiB):")
    for key in rows["base"][0]:
        base = statistics.median(r[key] for r in rows["base"])
        ours = statistics.median(r[key] for r in rows["ours"])
        ratio = f"({ours / base:.2f}x)" if base else ""
        print(f"{key:16} base {base:7.3f}s  ours {ours:7.3f}s  {ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other tree's src directory")
    parser.add_argument("--rounds", type=int, default=3)
    anyio.run(main, parser.parse_args())
