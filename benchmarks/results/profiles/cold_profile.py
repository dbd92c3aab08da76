"""Cold phases of ``bench_peer.py`` against dockerconnect alone (and ``direct``),
with the server's CPU seconds per phase, optionally under ``py-spy``.

Run from the repository root::

    python benchmarks/results/profiles/cold_profile.py --runs 3
    python benchmarks/results/profiles/cold_profile.py --spy big_cold   # flame SVG

Each run starts a fresh ``dockerconnect serve`` over an empty store (so every
phase is cold) and runs ``cold_small``, ``big_cold`` and ``concurrent_cold``
with bench_peer's own client, printing wall seconds, the server's CPU seconds
and the upstream's blob GETs. ``--spy PHASE`` records that phase's server
with ``py-spy record`` into this directory. Timings are for comparison within
one run on a shared machine, not absolute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import bench_peer as bp  # noqa: E402
from _peer_support import AccessLog, cpu_seconds, summarize_requests, wait_quiet  # noqa: E402

PHASES = ("cold_small", "big_cold", "concurrent_cold")


async def one_phase(
    phase: str, target: bp.Target, catalog: bp.Catalog, scratch: Path, log: AccessLog, up: int
) -> tuple[float, float, int]:
    pids = [up] if target.pid is None else [up, target.pid]
    await wait_quiet(log, pids)
    mark = log.mark()
    cpu = cpu_seconds(target.pid) if target.pid is not None else 0.0
    started = time.perf_counter()
    await bp.PHASE_RUNNERS[phase](target, catalog, bp.FULL, scratch)
    wall = time.perf_counter() - started
    await wait_quiet(log, pids)
    used = (cpu_seconds(target.pid) - cpu) if target.pid is not None else 0.0
    gets = summarize_requests(log.since(mark))["blob_get"]
    return wall, used, gets


def start_spy(
    args: argparse.Namespace, phase: str, run: int, pid: int | None
) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the server, into this directory, until SIGINT."""
    ext = "svg" if args.format == "flamegraph" else "txt"
    output = HERE / f"{args.label}-{phase}-run{run}.{ext}"
    command = [
        str(Path(sys.executable).parent / "py-spy"),
        "record", "-o", str(output), "-p", str(pid), "-r", "200", "--threads",
        "-f", args.format,
        *(["--idle"] if args.idle else []),
        *(["--native"] if args.native else []),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="cold-profile-"))
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    try:
        async with bp.DistributionRegistry(root=scratch / "upstream") as upstream:
            catalog = await bp.seed_upstream(upstream.url, upstream.address, bp.FULL, 7)
            log = AccessLog(upstream.log_path)
            up = bp.registry_pid(upstream)
            for run in range(args.runs):
                bp.warm_page_cache(scratch, bp._warm_size(bp.FULL))
                server = bp.AsgiServer(
                    scratch / f"dc-{run}", upstream.url, python=str(bp.deploy_venv())
                )
                server.start()
                assert server.process is not None
                ours = bp.Target("dockerconnect", server.url, server.process.pid)
                direct = bp.Target("direct", upstream.url, None)
                try:
                    for phase in PHASES:
                        targets = [ours] if args.no_direct else [direct, ours]
                        for target in targets:
                            spy = None
                            if args.spy == phase and target is ours:
                                spy = start_spy(args, phase, run, ours.pid)
                                await anyio.sleep(1.0)  # py-spy attached
                            figures = await one_phase(phase, target, catalog, scratch, log, up)
                            if spy is not None:
                                spy.send_signal(2)
                                spy.wait(timeout=60)
                            results.setdefault((phase, target.name), []).append(figures)
                            wall, used, gets = figures
                            print(
                                f"run {run + 1} {phase:16} {target.name:14} {wall:6.2f}s"
                                f" server CPU {used:5.2f}s  blob GETs {gets}",
                                flush=True,
                            )
                finally:
                    server.stop()
                    shutil.rmtree(scratch / f"dc-{run}", ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nmedians (min-max):")
    for (phase, name), rows in results.items():
        walls = [r[0] for r in rows]
        cpus = [r[1] for r in rows]
        print(
            f"{phase:16} {name:14} wall {statistics.median(walls):6.2f}s"
            f" ({min(walls):.2f}-{max(walls):.2f})"
            f"  server CPU {statistics.median(cpus):5.2f}s ({min(cpus):.2f}-{max(cpus):.2f})"
        )
    for phase in PHASES:
        if (phase, "direct") in results:
            d = statistics.median(r[0] for r in results[(phase, "direct")])
            o = statistics.median(r[0] for r in results[(phase, "dockerconnect")])
            print(f"{phase:16} dockerconnect / direct speed: {d / o:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--spy", choices=PHASES, default=None)
    parser.add_argument("--label", default="before")
    parser.add_argument("--no-direct", action="store_true")
    parser.add_argument("--idle", action="store_true", help="py-spy samples idle threads too")
    parser.add_argument("--native", action="store_true", help="py-spy samples C frames too")
    parser.add_argument("--format", choices=("flamegraph", "raw"), default="flamegraph")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    anyio.run(main, parser.parse_args())
