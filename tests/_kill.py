"""A child Python process that a crash test runs and then SIGKILLs.

The child prints the digest it works on as its first line; the test waits
for the moment it wants (lines printed, a file grown), kills it, and checks
what is left on disk.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dockerconnect._digest import Digest


@contextmanager
def child(script: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], Digest]]:
    """Run ``python -c script args`` with this interpreter's path; yield it and
    the digest it printed first. On leaving, SIGKILL it and check that is how
    it ended."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert process.stdout is not None
        digest = Digest.parse(process.stdout.readline().strip())
        yield process, digest
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def lines(process: subprocess.Popen[str], count: int, *, what: str) -> list[str]:
    """The next ``count`` lines ``process`` prints (stripped), within 120 s."""
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [printed.put(line) for line in process.stdout or ()], daemon=True
    ).start()
    deadline = time.monotonic() + 120
    got: list[str] = []
    while len(got) < count:
        try:
            line = printed.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{what}: {got}") from None
        got.append(line.strip())
    return got
