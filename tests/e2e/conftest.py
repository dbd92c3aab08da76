"""Real software on 127.0.0.1: docker-registry upstream, dockerconnect serve, skopeo.

Each test gets its own upstream (Debian's ``docker-registry``, through
:class:`dockerconnect.testing.DistributionRegistry`) and its own server
(``python -m dockerconnect serve`` as a subprocess in front of it), so tests
that stop the upstream or remove a connector disturb nobody. Without
``docker-registry`` or ``skopeo`` the tests are skipped with the reason, and
fail instead when ``CI=true``: CI must run them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dockerconnect.testing import DistributionRegistry
from dockerconnect.testing._distribution import stop_process

ROOT = Path(__file__).resolve().parents[2]
SKOPEO_TIMEOUT = 90.0


def _require(what: str, present: bool, how: str) -> None:
    if present:
        return
    reason = f"END-TO-END TESTS NOT RUN: {what} is not installed ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _real_tools() -> None:
    _require(
        "docker-registry (CNCF distribution)",
        DistributionRegistry.available(),
        "apt-get install docker-registry, or set DOCKER_REGISTRY_BIN",
    )
    _require("skopeo", shutil.which("skopeo") is not None, "apt-get install skopeo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ExampleServer:
    """``python -m dockerconnect serve`` running as a subprocess on 127.0.0.1.

    Started with ``admin = true`` so tests can call ``check()`` and remove
    connectors; ``config`` is more TOML for its file (``[auth]``, say) and
    ``server`` more lines of its ``[server]`` section; its
    output goes to :attr:`log_path`.
    """

    def __init__(
        self,
        store: Path,
        upstreams: Sequence[str],
        *,
        tag_ttl: float = 300.0,
        config: str = "",
        server: str = "",
        env: dict[str, str] | None = None,
        scheme: str = "http",
        factory: str | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.upstreams = list(upstreams)
        self.tag_ttl = tag_ttl
        self.config = config
        self.server = server
        self.env = dict(env or {})
        self.scheme = scheme
        #: Run this ``module:function`` app factory under uvicorn instead.
        self.factory = factory
        #: More ``dockerconnect serve`` flags (``--workers 2``, say).
        self.flags = list(flags)
        self.log_path = store.parent / f"{store.name}-server.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        self.port = _free_port()
        config = self.store.parent / f"{self.store.name}-serve.toml"
        config.write_text(
            f"[server]\nadmin = true\n{self.server}\n"
            f"[policy]\ntag_ttl = {self.tag_ttl}\n{self.config}\n"
        )
        command = [
            *(sys.executable, "-m", "dockerconnect", "serve", "--config", str(config)),
            *("--host", "127.0.0.1", "--port", str(self.port), "--store", str(self.store)),
            *("--log-level", "warning"),
            *self.flags,
        ]
        for url in self.upstreams:
            command += ["--upstream", url]
        if self.factory is not None:
            command = [
                *(sys.executable, "-m", "uvicorn", "--factory", self.factory),
                *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
            ]
        parts = (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH"))
        path = os.pathsep.join(p for p in parts if p)
        env = {**os.environ, "PYTHONPATH": path, **self.env}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
            )
        context = ssl._create_unverified_context() if self.scheme == "https" else None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/healthz", timeout=2, context=context
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not come up:\n{self.log_text()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process)

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request: status, headers (lower-case names), body."""
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers, response.read()
        except urllib.error.HTTPError as error:
            headers = {k.lower(): v for k, v in error.headers.items()}
            return error.code, headers, error.read()

    def json(self, method: str, path: str) -> Any:
        status, _, body = self.request(method, path)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionRegistry]:
    """A fresh docker-registry; its access log is ``log_text()``."""
    with DistributionRegistry(root=tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers: ``make_server(upstream_urls, tag_ttl=..., config=..., env=...)``."""
    servers: list[ExampleServer] = []

    def make(upstreams: Sequence[str], **options: Any) -> ExampleServer:
        server = ExampleServer(tmp_path / f"store{len(servers)}", upstreams, **options)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def skopeo(tmp_path: Path) -> Callable[..., str]:
    """``skopeo(*args)`` runs ``skopeo --insecure-policy ARGS`` with a private
    auth file and returns its stdout; a failure is an ``AssertionError`` with
    skopeo's output."""
    tool = shutil.which("skopeo")
    assert tool is not None
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "skopeo-auth.json")}

    def run(*args: str) -> str:
        done = subprocess.run(
            [tool, "--insecure-policy", *args],
            capture_output=True,
            text=True,
            timeout=SKOPEO_TIMEOUT,
            env=env,
        )
        assert done.returncode == 0, f"skopeo {' '.join(args)} failed:\n{done.stderr}{done.stdout}"
        return done.stdout

    return run
