"""Real servers on 127.0.0.1 for the shared backends: moto (S3) and redis-server.

The classes; ``conftest.py`` holds the fixtures that start them.

``moto`` runs in server mode as a subprocess: a real HTTP S3 endpoint that
the production client code talks to exactly as it talks to AWS S3, MinIO or
Ceph RGW. Redis is Debian's ``redis-server`` with persistence off. Each is
started once per test session on a random port and stopped by its pid; each
test gets its own bucket or key prefix, so tests share nothing. Without
``moto`` / ``redis-server`` (or the ``[s3]`` / ``[redis]`` extras) the tests
are skipped with the reason, and fail instead when ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dockerconnect.testing._distribution import stop_process

_counter = itertools.count()


def require(what: str, present: bool, how: str) -> None:
    """Skip (fail under ``CI=true``) when ``what`` is missing."""
    if present:
        return
    reason = f"SHARED-BACKEND TESTS NOT RUN: {what} is not installed ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique(stem: str) -> str:
    """A name no other test in this session uses (buckets, key prefixes)."""
    return f"{stem}-{os.getpid()}-{next(_counter)}"


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{what} did not come up:\n{log.read_text(errors='replace')[-4000:]}")


class MotoServer:
    """``moto`` in server mode, as a subprocess on 127.0.0.1."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "moto.log"
        self._client: Any = None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(self.process, self.port, self.log, "moto_server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A synchronous boto3 client, for test set-up and inspection (made once:
        making one costs more than most requests)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def store_args(self) -> dict[str, Any]:
        """What ``S3BlobStore`` needs to reach this server."""
        return {
            "endpoint_url": self.url,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "addressing_style": "path",
        }

    def stop(self) -> None:
        stop_process(self.process)


class RedisServer:
    """Debian's ``redis-server`` on 127.0.0.1, persistence off."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.port = free_port()
        self.log = workdir / "redis.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(self.process, self.port, self.log, "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process)
