"""Measuring tools for ``bench_peer.py``: a verifying pull client, the upstream's
access log read as request counts, and a watch over a server process's memory
and CPU.

Private to the benchmarks; nothing here depends on dockerconnect, so the client
that measures dockerconnect is not built from the code it measures.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

MiB = 1024 * 1024

#: What the client accepts for a manifest, as ``docker pull`` and skopeo do.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
USER_AGENT = "bench-peer-client/1"
RETRIES = 3  # attempts after a 5xx answer, as a container runtime makes
RETRY_PAUSE = 0.1  # seconds before the first retry; doubled, tripled after


# -- the client ---------------------------------------------------------------------


class VerificationFailed(Exception):
    """A server answered with bytes that do not match what was asked for."""


@dataclass
class PullTally:
    """What one or more pulls received."""

    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    server_errors: int = 0  # 5xx answers, each retried as a client would

    def add(self, other: PullTally) -> None:
        self.manifests += other.manifests
        self.blobs += other.blobs
        self.bytes += other.bytes
        self.server_errors += other.server_errors


def _sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Puller:
    """A minimal registry client (distribution-spec "Pulling manifests" and
    "Pulling blobs") that verifies every byte it receives.

    A pull GETs the manifest with an ``Accept`` of the four image types,
    checks its digest (against the reference when it is a digest, against the
    expected digest when given, against ``Docker-Content-Digest`` when sent),
    then GETs each blob one after another, streaming, hashing as it goes and
    comparing digest and size. An index is followed into every child.

    A 5xx answer is retried after a short pause, up to ``retries`` times, as
    containerd and Docker retry a failed layer; each one is counted in the
    tally's ``server_errors``, so a proxy that fails under load is reported
    rather than ending the run. Any other failure ends the pull.
    """

    def __init__(self, base_url: str, client: httpx.AsyncClient, *, retries: int = RETRIES) -> None:
        self.base = base_url.rstrip("/")
        self.client = client
        self.retries = retries
        self.server_errors = 0

    async def _retry(self, url: str, status: int, text: str, attempt: int) -> None:
        """Count a 5xx answer and pause before the next attempt, or raise."""
        if status < 500 or attempt >= self.retries:
            raise VerificationFailed(f"GET {url}: {status} {text[:300]}")
        self.server_errors += 1
        await anyio.sleep(RETRY_PAUSE * (attempt + 1))

    async def pull(
        self, repository: str, reference: str, *, expect: str | None = None
    ) -> PullTally:
        before = self.server_errors
        tally = await self._pull(repository, reference, expect=expect)
        tally.server_errors = self.server_errors - before
        return tally

    async def _manifest(self, url: str) -> httpx.Response:
        for attempt in itertools.count():
            response = await self.client.get(url, headers={"Accept": ", ".join(MANIFEST_TYPES)})
            if response.status_code == 200:
                return response
            await self._retry(url, response.status_code, response.text, attempt)
        raise AssertionError("unreachable")

    async def _pull(self, repository: str, reference: str, *, expect: str | None) -> PullTally:
        tally = PullTally()
        url = f"{self.base}/v2/{repository}/manifests/{reference}"
        response = await self._manifest(url)
        body = response.content
        digest = _sha256_digest(body)
        wanted = reference if reference.startswith("sha256:") else expect
        if wanted is not None and digest != wanted:
            raise VerificationFailed(f"{url}: manifest digest {digest}, expected {wanted}")
        header = response.headers.get("docker-content-digest")
        if header is not None and header != digest:
            raise VerificationFailed(f"{url}: Docker-Content-Digest {header} but body is {digest}")
        document = json.loads(body)
        media_type = document.get("mediaType")
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type and content_type != media_type:
            raise VerificationFailed(
                f"{url}: Content-Type {content_type}, document says {media_type}"
            )
        tally.manifests += 1
        tally.bytes += len(body)
        if "manifests" in document:
            for child in document["manifests"]:
                tally.add(await self._pull(repository, child["digest"], expect=None))
            return tally
        for descriptor in [document["config"], *document["layers"]]:
            tally.bytes += await self.blob(repository, descriptor["digest"], descriptor["size"])
            tally.blobs += 1
        return tally

    async def blob(self, repository: str, digest: str, size: int) -> int:
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        algorithm, _, expected = digest.partition(":")
        if algorithm != "sha256":
            raise VerificationFailed(f"{url}: the benchmark only verifies sha256")
        for attempt in itertools.count():
            hasher = hashlib.sha256()
            received = 0
            async with self.client.stream("GET", url) as response:
                if response.status_code == 200:
                    async for chunk in response.aiter_raw():
                        hasher.update(chunk)
                        received += len(chunk)
                    break
                await response.aread()
            await self._retry(url, response.status_code, response.text, attempt)
        if received != size or hasher.hexdigest() != expected:
            raise VerificationFailed(
                f"{url}: got {received} bytes hashing to sha256:{hasher.hexdigest()}, "
                f"expected {size} bytes of {digest}"
            )
        return received


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(300.0, connect=30.0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


# -- the upstream's access log --------------------------------------------------------

# distribution writes one Apache "combined" line per request (log.accesslog):
# 127.0.0.1 - - [27/Nov/2026:08:13:46 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "Go-http-client/1.1"
_COMBINED = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "[^"]*" "(?P<agent>[^"]*)"'
)
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/?]+)$")


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    bytes: int
    agent: str

    @property
    def kind(self) -> str:
        """``ping``, ``manifest``, ``blob``, ``upload``, ``tags`` or ``other``."""
        if self.path == "/v2/":
            return "ping"
        if "/blobs/uploads" in self.path:
            return "upload"
        match = _PATH.match(self.path)
        if match is not None:
            return "manifest" if match["kind"] == "manifests" else "blob"
        if self.path.endswith("/tags/list"):
            return "tags"
        return "other"

    @property
    def reference(self) -> str | None:
        match = _PATH.match(self.path)
        return match["ref"] if match is not None else None


class AccessLog:
    """The upstream registry's log, read from a byte offset onwards.

    Phases run one after another, so the requests a phase caused upstream are
    the lines between the offsets taken before and after it (once everything
    has gone quiet, see :func:`wait_quiet`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, offset: int) -> list[LoggedRequest]:
        with self.path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            match = _COMBINED.match(line)
            if match is None:
                continue
            uri = match["uri"]
            out.append(
                LoggedRequest(
                    method=match["method"],
                    path=uri.split("?", 1)[0],
                    status=int(match["status"]),
                    bytes=0 if match["bytes"] == "-" else int(match["bytes"]),
                    agent=match["agent"],
                )
            )
        return out


def summarize_requests(requests: Sequence[LoggedRequest]) -> dict[str, Any]:
    """Counts by kind, body bytes sent, and blob GETs beyond one per digest."""
    counts: Counter[str] = Counter()
    blob_gets: Counter[str] = Counter()
    body_bytes = 0
    for r in requests:
        kind = r.kind
        counts[f"{r.method} {kind}" if kind in ("manifest", "blob") else kind] += 1
        if r.method != "HEAD":  # distribution logs a HEAD's Content-Length as its size
            body_bytes += r.bytes
        if kind == "blob" and r.method == "GET" and r.status in (200, 206) and r.reference:
            blob_gets[r.reference] += 1
    return {
        "requests": len(requests),
        "ping": counts["ping"],
        "manifest_head": counts["HEAD manifest"],
        "manifest_get": counts["GET manifest"],
        "blob_head": counts["HEAD blob"],
        "blob_get": counts["GET blob"],
        "other": counts["upload"] + counts["tags"] + counts["other"],
        "errors": sum(1 for r in requests if r.status >= 400),
        "bytes": body_bytes,
        "blob_get_distinct": len(blob_gets),
        "duplicate_blob_gets": sum(blob_gets.values()) - len(blob_gets),
        "agents": dict(Counter(r.agent for r in requests)),
    }


# -- processes --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def warm_page_cache(directory: Path, size: int, chunk: int = 4 * MiB) -> float:
    """Write ``size`` bytes to a file in ``directory``, ``fsync`` it and remove it.

    On a virtual machine, writing to page-cache pages the guest has never
    touched is several times slower than reusing freed ones. Called before
    every run, so each contender's stores (distribution's, dockerconnect's)
    write to recycled pages alike rather than whoever writes first paying the
    first touch. Returns the seconds it took.
    """
    started = time.perf_counter()
    block = os.urandom(chunk)
    path = directory / "page-cache-warmer"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(max(1, size // chunk)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return time.perf_counter() - started


def own_cpu_seconds() -> float:
    """User + system CPU of this process's threads and of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU of every thread of ``pid`` so far (``/proc/PID/stat``), or
    of its one ``thread`` (``/proc/PID/task/TID/stat``; ``pid`` is its main thread)."""
    where = f"/proc/{pid}" if thread is None else f"/proc/{pid}/task/{thread}"
    stat = Path(f"{where}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


class ProcessWatch:
    """Peak RSS and CPU time of one process (and of its main thread) over a stretch
    of time.

    The peak is the kernel's ``VmHWM`` after resetting it through
    ``/proc/PID/clear_refs`` (needs the right to trace the process, which its
    parent has), and at least the highest ``VmRSS`` sampled every 20 ms.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak_sampled = 0
        self._hwm_reset = False
        self._cpu0 = 0.0
        self._main0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._cpu0 = cpu_seconds(self.pid)
        self._main0 = cpu_seconds(self.pid, self.pid)
        self._peak_sampled = _status_kib(self.pid, "VmRSS:")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._peak_sampled = max(self._peak_sampled, _status_kib(self.pid, "VmRSS:"))
            except OSError:
                return

    def so_far(self) -> dict[str, float]:
        """CPU seconds of the process and of its main thread since :meth:`start`."""
        return {
            "cpu_s": cpu_seconds(self.pid) - self._cpu0,
            "main_thread_cpu_s": cpu_seconds(self.pid, self.pid) - self._main0,
        }

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = self._peak_sampled
        if self._hwm_reset:
            peak = max(peak, _status_kib(self.pid, "VmHWM:"))
        # A Python server's event loop runs on its main thread.
        return {"peak_rss_mib": peak / 1024, **self.so_far()}


async def wait_quiet(
    log: AccessLog,
    pids: Iterable[int],
    *,
    interval: float = 0.1,
    settle: int = 3,
    timeout: float = 120.0,
) -> None:
    """Wait until the upstream's log stops growing and ``pids`` stop using CPU.

    distribution's proxy fills its cache with a second, background download
    after it has answered the client; a phase is only over (for counting, and
    so as not to load the next phase) when that is done. "Quiet" is
    ``settle`` intervals in a row with no new log bytes and at most one clock
    tick of CPU in each process.
    """
    watched = list(pids)
    quiet = 0
    last_size = log.mark()
    last_cpu = [cpu_seconds(p) for p in watched]
    deadline = time.monotonic() + timeout
    while quiet < settle:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the upstream and proxies did not go quiet within {timeout}s")
        await anyio.sleep(interval)
        size = log.mark()
        cpu = [cpu_seconds(p) for p in watched]
        busy = size != last_size or any(
            now - before > 1.5 / _TICK for now, before in zip(cpu, last_cpu, strict=True)
        )
        quiet = 0 if busy else quiet + 1
        last_size, last_cpu = size, cpu


@dataclass
class PhaseRecord:
    """The figures of one phase against one target."""

    wall_s: float
    tally: PullTally
    upstream: dict[str, Any]
    upstream_cpu_s: float
    proxy: dict[str, float] | None
    #: CPU seconds of the benchmark's own process (the verifying client) and of
    #: the children it waited for (skopeo) while the pulls ran.
    client_cpu_s: float = 0.0
    #: CPU seconds of the proxy (``proxy_s``, ``proxy_main_s``) and of the
    #: upstream (``upstream_s``) while the pulls ran, without what they did
    #: after the last answer (``proxy`` and ``upstream_cpu_s`` count that).
    pull_cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        mib = self.tally.bytes / MiB
        return {
            "wall_s": self.wall_s,
            "bytes": self.tally.bytes,
            "mib_s": mib / self.wall_s if self.wall_s > 0 else 0.0,
            "manifests": self.tally.manifests,
            "blobs": self.tally.blobs,
            "server_errors": self.tally.server_errors,
            "upstream": self.upstream,
            "upstream_cpu_s": self.upstream_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "pull_cpu": self.pull_cpu,
            "proxy": self.proxy,
            **self.extra,
        }
