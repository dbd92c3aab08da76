"""Processes for the sharing tests and ``benchmarks/bench_sharing.py``.

``dockerconnect serve`` started as a real process (with ``--workers``, or as
one replica of several), clients that pull an image through it and check
every byte, the upstream ``docker-registry``'s access log read back as the
count of ``GET``s per blob, and the resident memory of a process tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from dockerconnect.testing import DistributionRegistry, RandomImage
from dockerconnect.testing._distribution import stop_process

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**more: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.update(more)
    return env


class Serve:
    """``dockerconnect serve ARGS`` on a free port, stopped by its pid (and its workers')."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "dockerconnect", "serve", "--port", str(self.port)]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, *args, "--log-level", log_level],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env or environment(),
                start_new_session=True,
            )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"serve did not come up:\n{self.log.read_text()[-4000:]}")

    def pids(self) -> list[int]:
        """The server's pid and its workers' (children)."""
        found = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(entry))
        return found

    def rss(self) -> int:
        """Resident bytes of the server and its workers, summed."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        stop_process(self.process, timeout=20)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def pull(url: str, repository: str, image: RandomImage, *, tag: str = "latest") -> int:
    """Pull ``image`` as a client does (manifest, then its blobs at once), checking
    every byte; the number of bytes received."""
    sizes: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        answer = await client.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT})
        answer.raise_for_status()
        assert answer.content == image.manifest.data
        digests = [str(d) for d in image.blobs]

        async def blob(digest: str) -> None:
            hasher = hashlib.sha256()
            # A connection of its own for each blob, as a client pulling
            # layers in parallel opens: workers accept them in turn.
            path = f"/v2/{repository}/blobs/{digest}"
            async with client.stream("GET", path, headers={"Connection": "close"}) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    hasher.update(chunk)
                    sizes.append(len(chunk))
            assert f"sha256:{hasher.hexdigest()}" == digest, digest

        async with anyio.create_task_group() as tg:
            for digest in digests:
                tg.start_soon(blob, digest)
    return sum(sizes)


async def pull_many(
    urls: Sequence[str], repository: str, image: RandomImage, clients: int, *, stagger: float = 0.0
) -> int:
    """``clients`` concurrent pulls, spread round-robin over ``urls``, each
    starting ``stagger`` seconds after the one before; bytes received."""
    received: list[int] = []

    async def one(n: int) -> None:
        await anyio.sleep(n * stagger)
        received.append(await pull(urls[n % len(urls)], repository, image))

    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one, n)
    return sum(received)


def blob_gets(upstream: DistributionRegistry, repository: str, digest: str) -> list[int]:
    """The byte counts of every ``GET`` of ``digest`` in the upstream's access log."""
    name = re.escape(f"/v2/{repository}/blobs/{digest}")
    pattern = re.compile(rf'"GET {name} HTTP/[\d.]+" \d+ (\d+)')
    return [int(m.group(1)) for m in pattern.finditer(upstream.log_text())]


def serving_pids(log: Path, repository: str) -> dict[str, set[int]]:
    """Which processes of a server answered each blob ``GET`` (from its access log)."""
    pattern = re.compile(
        rf'\[(\d+)\] INFO dockerconnect\.asgi\.access .*"GET /v2/{re.escape(repository)}'
        r'/blobs/(sha256:[0-9a-f]+)" 200'
    )
    found: dict[str, set[int]] = {}
    for pid, digest in pattern.findall(log.read_text(errors="replace")):
        found.setdefault(digest, set()).add(int(pid))
    return found


def upstream_requests(upstream: DistributionRegistry) -> int:
    """Every request in the upstream's access log."""
    return len(re.findall(r'"(?:GET|HEAD|POST|PUT|PATCH|DELETE) /v2/', upstream.log_text()))


def wait_for(what: str, condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
