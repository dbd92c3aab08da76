"""One process against four workers over one filesystem store, in front of a real upstream.

Run from the repository root (inside the project's virtualenv)::

    python benchmarks/bench_sharing.py           # 3 runs, medians
    python benchmarks/bench_sharing.py --quick   # 1 run, 16 x 2 MiB image (CI)

**Setup.** On 127.0.0.1, sharing the machine's cores: an upstream
``docker-registry`` with its access log on (every request it serves is
counted from it), and ``dockerconnect serve --store DIR --upstream URL``
with ``--workers 1`` or ``--workers 4`` over an empty store each run.

**Phases**, each run, against each configuration in turn:

- ``cold``: 16 clients pulling one image of 4 x 8 MiB raw layers at once
  (manifest by tag, then every blob at once, one connection per blob), the
  cache empty: the upstream should see one ``GET`` per blob either way;
- ``warm``: the same 16 clients pulling it again, ``--rounds`` times.

Throughput is the bytes every client received (and hashed: each body's
digest is checked) over the phase's wall time; the clients run in four
forked processes of their own (one Python process cannot parse and hash 16
streams fast enough to load four workers). Upstream requests are
counted from the upstream's access log. RSS is the sum over the server's
processes (the supervisor and its workers), sampled every 50 ms; the peak
is reported. The clients take their share of the two cores too.

Results go to ``benchmarks/results/sharing.json`` and ``sharing.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "sharing"))

from _procs import Serve, blob_gets, pull_many, upstream_requests  # noqa: E402

from dockerconnect.testing import (  # noqa: E402
    DistributionRegistry,
    push_content,
    random_image,
)

MiB = 1 << 20
REPO = "bench/app"
CLIENTS = 16
#: Client processes the 16 clients are spread over: one Python process
#: cannot hash and parse 16 streams fast enough to load four workers.
CLIENT_PROCESSES = 4
#: The image, inherited by forked client processes.
IMAGE: Any = None


def _pull_share(url: str) -> int:
    return anyio.run(pull_many, [url], REPO, IMAGE, CLIENTS // CLIENT_PROCESSES)


def pull_all(pool: Any, url: str) -> int:
    """The 16 clients at once, over the client processes; bytes received (and checked)."""
    return sum(pool.map(_pull_share, [url] * CLIENT_PROCESSES))


@contextmanager
def peak_rss(server: Serve) -> Iterator[Callable[[], int]]:
    """Sample the server's RSS every 50 ms while the block runs."""
    peak = [server.rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join()


def measure(
    upstream: DistributionRegistry,
    image: Any,
    workers: int,
    rounds: int,
    scratch: Path,
    run: int,
    pool: Any,
) -> dict[str, Any]:
    store = scratch / f"store-{workers}-{run}"
    args = ["--workers", str(workers), "--store", str(store), "--upstream", upstream.url]
    image_bytes = sum(len(b) for b in image.blobs.values())
    row: dict[str, Any] = {"workers": workers}
    with Serve(args, scratch / f"serve-{workers}-{run}.log") as server:
        before = upstream_requests(upstream)
        gets_before = {str(d): len(blob_gets(upstream, REPO, str(d))) for d in image.blobs}
        with peak_rss(server) as peak:
            start = time.perf_counter()
            received = pull_all(pool, server.url)
            seconds = time.perf_counter() - start
            assert received == CLIENTS * image_bytes
            row["cold_seconds"] = seconds
            row["cold_mb_s"] = received / seconds / 1e6
            row["cold_upstream_requests"] = upstream_requests(upstream) - before
            row["cold_blob_gets"] = sum(
                len(blob_gets(upstream, REPO, d)) - n for d, n in gets_before.items()
            )
            row["cold_rss_mib"] = peak() / MiB
        with peak_rss(server) as peak:
            before = upstream_requests(upstream)
            start = time.perf_counter()
            for _ in range(rounds):
                received = pull_all(pool, server.url)
                assert received == CLIENTS * image_bytes
            seconds = time.perf_counter() - start
            row["warm_seconds"] = seconds
            row["warm_mb_s"] = rounds * received / seconds / 1e6
            row["warm_upstream_requests"] = upstream_requests(upstream) - before
            row["warm_rss_mib"] = peak() / MiB
    return row


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": rows[0]["workers"], "runs": len(rows)}
    for key in rows[0]:
        if key != "workers":
            out[key] = statistics.median(r[key] for r in rows)
    return out


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    size = results["image"]
    out = [
        "# Sharing one store: one process against four workers",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"upstream docker-registry on 127.0.0.1; {CLIENTS} clients pulling one image of "
        f"{size['layers']} x {size['layer_mib']} MiB layers; medians of {rows[0]['runs']} run(s); "
        f"warm = {results['rounds']} rounds. Produced by `benchmarks/bench_sharing.py`.",
        "",
        "| | " + " | ".join(f"--workers {r['workers']}" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    lines = [
        ("cold: throughput (MB/s)", "cold_mb_s", "{:.0f}"),
        ("cold: wall time (s)", "cold_seconds", "{:.2f}"),
        ("cold: upstream blob GETs", "cold_blob_gets", "{:.0f}"),
        ("cold: upstream requests (all)", "cold_upstream_requests", "{:.0f}"),
        ("cold: peak RSS, all processes (MiB)", "cold_rss_mib", "{:.0f}"),
        ("warm: throughput (MB/s)", "warm_mb_s", "{:.0f}"),
        ("warm: wall time (s)", "warm_seconds", "{:.2f}"),
        ("warm: upstream requests", "warm_upstream_requests", "{:.0f}"),
        ("warm: peak RSS, all processes (MiB)", "warm_rss_mib", "{:.0f}"),
    ]
    for label, key, fmt in lines:
        out.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in rows) + " |")
    out += [
        "",
        f"The image has {size['blobs']} blobs (config and layers): the fewest cold "
        "blob GETs possible is that many.",
        "",
    ]
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    if not DistributionRegistry.available():
        print("bench_sharing: docker-registry is not installed (apt-get install docker-registry)")
        return 1
    quick = args.quick
    layer_mib = 2 if quick else 8
    runs = 1 if quick else args.runs
    rounds = 1 if quick else args.rounds
    out_dir = Path(args.output) if args.output else HERE / "results"
    scratch = Path(tempfile.mkdtemp(prefix="bench-sharing-"))
    global IMAGE
    image = IMAGE = random_image(layers=4, layer_size=layer_mib * MiB, layer_format="raw", seed=15)
    per_config: dict[int, list[dict[str, Any]]] = {1: [], 4: []}
    forked = multiprocessing.get_context("fork")
    with DistributionRegistry() as upstream, forked.Pool(CLIENT_PROCESSES) as pool:
        anyio.run(push_content, upstream.url, REPO, image)
        for run in range(runs):
            order = [1, 4] if run % 2 == 0 else [4, 1]
            for workers in order:
                row = measure(upstream, image, workers, rounds, scratch, run, pool)
                print(json.dumps(row), flush=True)
                per_config[workers].append(row)
    results = {
        "image": {"layers": 4, "layer_mib": layer_mib, "blobs": len(image.blobs)},
        "rounds": rounds,
        "rows": [median_rows(per_config[w]) for w in (1, 4)],
    }
    text = markdown(results)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sharing.json").write_text(json.dumps(results, indent=2))
    (out_dir / "sharing.md").write_text(text)
    print(f"results written to {out_dir}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small image, one run (CI)")
    parser.add_argument("--output", help="directory for results")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are reported)")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds per run")
    sys.exit(main(parser.parse_args()))
