"""A dead upstream, before and after connector health marks it down.

Run from the repository root::

    python benchmarks/bench_health.py            # 5 requests before, 1000 after
    python benchmarks/bench_health.py --quick    # 2 before, 50 after (CI)

The upstream is an ``HttpConnector`` (default retries and timeouts) to a
127.0.0.1 port nothing listens on, so every connect is refused. Each
request is ``get_manifest`` of a tag, which fails with ``UpstreamError``.

- **before**: ``Resolver(health=None)`` (what a resolver without health
  tracking does): every request goes through the connector's retries.
- **after**: ``Resolver(health=HealthPolicy())``: the first requests fail
  as before until the connector is *down*; then each is skipped without I/O.

Reported side by side: the median (and p90) latency per request, and the
HTTP requests that reached the network (a counting transport under the
connector). Results go to ``benchmarks/results/health.json`` and ``health.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dockerconnect import HealthPolicy, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.errors import UpstreamError
from dockerconnect.http import HttpConnector


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts every HTTP request handed to the network."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens


async def measure(health: HealthPolicy | None, requests: int, warmup: int) -> dict[str, Any]:
    transport = CountingTransport()
    connector = HttpConnector(f"http://127.0.0.1:{closed_port()}", name="dead", transport=transport)
    times: list[float] = []
    async with (
        connector,
        Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=MemoryBlobStore(),
            connectors=[connector],
            health=health,
        ) as r,
    ):
        for i in range(warmup + requests):
            if i == warmup:
                network_before = transport.requests
            started = time.perf_counter()
            try:
                await r.get_manifest("app", "v1")
            except UpstreamError:
                pass
            else:
                raise AssertionError("a dead upstream answered")
            if i >= warmup:
                times.append(time.perf_counter() - started)
        state = r.health["dead"].state
    times.sort()
    return {
        "requests": requests,
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": times[max(0, math.ceil(0.9 * len(times)) - 1)] * 1000,
        "network_requests": transport.requests - network_before,
        "network_requests_to_mark_down": network_before,
        "state": state,
    }


def markdown(before: dict[str, Any], after: dict[str, Any]) -> str:
    return "\n".join(
        [
            "### Requests against a dead upstream (connect refused)",
            "",
            "| | requests | median ms | p90 ms | HTTP requests sent | state |",
            "|---|---:|---:|---:|---:|---|",
            f"| before (health=None) | {before['requests']} | {before['median_ms']:.1f} | "
            f"{before['p90_ms']:.1f} | {before['network_requests']} | {before['state']} |",
            f"| after it is marked down | {after['requests']} | {after['median_ms']:.3f} | "
            f"{after['p90_ms']:.3f} | {after['network_requests']} | {after['state']} |",
            "",
            f"Marking it down took {after['network_requests_to_mark_down']} HTTP requests "
            f"(the first {HealthPolicy().failures} failed requests, with their retries).",
            "",
        ]
    )


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    logging.getLogger("dockerconnect").setLevel(logging.ERROR)  # one warning per request
    out_dir = (
        Path(args.output)
        if args.output
        else (Path(tempfile.mkdtemp()) if quick else Path(__file__).parent / "results")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    before = await measure(None, 2 if quick else 5, 0)
    after = await measure(HealthPolicy(), 50 if quick else 1000, HealthPolicy().failures)
    text = markdown(before, after)
    print(text)
    result = {
        "before": before,
        "after": after,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "quick": quick,
    }
    (out_dir / "health.json").write_text(json.dumps(result, indent=2))
    (out_dir / "health.md").write_text(text)
    print(f"results written to {out_dir}")
    ok = after["median_ms"] < 5 and after["network_requests"] == 0 and after["state"] == "down"
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests (CI)")
    parser.add_argument("--output", help="directory for results")
    sys.exit(anyio.run(main, parser.parse_args()))
