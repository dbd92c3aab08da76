"""Run CNCF distribution (Debian's ``docker-registry``) for end-to-end tests.

:class:`DistributionRegistry` starts the real registry binary on 127.0.0.1 on
a free port, with a temporary configuration and storage directory, and stops
it again; it can require htpasswd basic auth, token auth, or run as a pull-
through proxy. :func:`skopeo_push` pushes generated content with the real
``skopeo`` client; :func:`push_content` pushes it through the registry HTTP
API directly (no external tool), for seeding conformance runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
import attrs
import httpx

from dockerconnect._digest import Digest
from dockerconnect._manifest import Manifest
from dockerconnect.testing._images import RandomImage, RandomIndex, write_oci_layout

__all__ = [
    "DistributionRegistry",
    "ToolNotInstalled",
    "TokenAuthConfig",
    "push_content",
    "stop_process",
    "skopeo_push",
]

#: Where Debian's ``docker-registry`` package installs the binary.
DEFAULT_BINARY = "/usr/bin/docker-registry"


class ToolNotInstalled(RuntimeError):
    """A real component the tests need (``docker-registry``, ``skopeo``) is missing."""


@attrs.frozen(slots=True)
class TokenAuthConfig:
    """distribution's ``auth.token`` section (docs/configuration.md "token").

    The registry answers ``401`` with a challenge naming ``realm`` and
    ``service``, and accepts JWTs whose ``iss`` is ``issuer``, whose ``aud``
    is ``service``, and which are signed by a key whose certificate chains to
    ``rootcertbundle`` (a PEM file).
    """

    realm: str
    service: str
    issuer: str
    rootcertbundle: str | os.PathLike[str]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _htpasswd_line(user: str, password: str) -> str:
    # distribution's htpasswd backend accepts bcrypt hashes only.
    try:
        import bcrypt
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            raise ToolNotInstalled(
                "htpasswd auth needs the 'bcrypt' package or apache2-utils' htpasswd"
            ) from None
        done = subprocess.run(
            [tool, "-nbB", user, password], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}"


class DistributionRegistry:
    """A real ``docker-registry`` (CNCF distribution 2.x) on 127.0.0.1.

    Use as a context manager, sync or async (``with`` / ``async with``), or
    call :meth:`start` and :meth:`stop`. ``users`` turns on htpasswd basic
    auth; ``token`` turns on token auth; ``proxy`` (an upstream URL, with
    ``proxy_username`` / ``proxy_password``) makes it a pull-through cache.
    The access log goes to :attr:`log_path`. Raises :class:`ToolNotInstalled`
    when the binary is missing, and ``RuntimeError`` (with the log's tail)
    when it does not come up within ``startup_timeout`` seconds.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        users: Mapping[str, str] | None = None,
        token: TokenAuthConfig | None = None,
        proxy: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        root: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        if users and token is not None:
            raise ValueError("choose htpasswd users or token auth, not both")
        self.binary = str(binary or os.environ.get("DOCKER_REGISTRY_BIN", DEFAULT_BINARY))
        self.users = dict(users or {})
        self.token = token
        self.proxy = proxy
        self.proxy_username = proxy_username
        self.proxy_password = proxy_password
        self.startup_timeout = startup_timeout
        self._given_root = Path(root) if root is not None else None
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @staticmethod
    def available(binary: str | None = None) -> bool:
        """Whether the registry binary is installed."""
        path = binary or os.environ.get("DOCKER_REGISTRY_BIN", DEFAULT_BINARY)
        return os.access(path, os.X_OK) or shutil.which(path) is not None

    @property
    def pid(self) -> int | None:
        """The registry process's id while it runs (for resource measurements)."""
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the registry is not running")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    @property
    def root(self) -> Path:
        """The directory holding configuration, storage and log."""
        if self._root is None:
            raise RuntimeError("the registry is not running")
        return self._root

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def log_text(self) -> str:
        """Everything the registry logged so far (access log included)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def config(self, port: int) -> dict[str, Any]:
        """The registry's configuration (JSON, which is also YAML)."""
        root = self.root
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.users:
            htpasswd = root / "htpasswd"
            lines = [_htpasswd_line(u, p) for u, p in self.users.items()]
            htpasswd.write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "dockerconnect-tests", "path": str(htpasswd)}}
        if self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle),
                }
            }
        if self.proxy is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy}
            if self.proxy_username is not None:
                proxy["username"] = self.proxy_username
                proxy["password"] = self.proxy_password or ""
            config["proxy"] = proxy
        return config

    def start(self) -> None:
        """Start the registry and wait until ``/v2/`` answers."""
        if self._process is not None:
            raise RuntimeError("the registry is already running")
        if not self.available(self.binary):
            raise ToolNotInstalled(
                f"CNCF distribution is not installed at {self.binary} "
                "(apt-get install docker-registry, or set DOCKER_REGISTRY_BIN)"
            )
        if self._given_root is not None:
            self._given_root.mkdir(parents=True, exist_ok=True)
            self._root = self._given_root
        else:
            self._root = Path(tempfile.mkdtemp(prefix="dockerconnect-registry-"))
        # Another process may take the free port between our probe and the
        # registry's bind: try a few.
        last_error: Exception | None = None
        for _ in range(3):
            port = _free_port("127.0.0.1")
            config_path = self.root / "config.yml"
            config_path.write_text(json.dumps(self.config(port), indent=2))
            log = self.log_path.open("ab")
            try:
                self._process = subprocess.Popen(
                    [self.binary, "serve", str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            self._port = port
            try:
                self._wait_ready()
            except RuntimeError as exc:
                last_error = exc
                self._terminate()
                if "address already in use" not in self.log_text():
                    break
            else:
                return
        self._cleanup()
        raise RuntimeError(str(last_error))

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self._process.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"docker-registry did not answer within {self.startup_timeout}s:\n"
            + self.log_text()[-4000:]
        )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        self._port = None
        if process is None:
            return
        stop_process(process)

    def _cleanup(self) -> None:
        if self._root is not None and self._given_root is None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def stop(self) -> None:
        """Stop the registry and remove its temporary directory (if it made one)."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> DistributionRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> DistributionRegistry:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "stopped"
        return f"DistributionRegistry({where})"


def skopeo_push(
    address: str,
    repository: str,
    content: RandomImage | RandomIndex,
    *,
    tag: str = "latest",
    credentials: tuple[str, str] | None = None,
    skopeo: str | None = None,
    timeout: float = 120.0,
) -> None:
    """Push ``content`` to ``address/repository:tag`` with the real ``skopeo``.

    Writes an OCI layout with :func:`write_oci_layout` and runs ``skopeo copy
    --all --preserve-digests --dest-tls-verify=false oci:DIR:TAG
    docker://ADDRESS/REPOSITORY:TAG``, so digests stay those of ``content``.
    Blocking: call it through ``anyio.to_thread.run_sync`` from async code.
    Raises :class:`ToolNotInstalled` without skopeo and ``RuntimeError``
    (with skopeo's output) when the copy fails.
    """
    tool = skopeo or shutil.which("skopeo")
    if tool is None:
        raise ToolNotInstalled("skopeo is not installed (apt-get install skopeo)")
    with tempfile.TemporaryDirectory(prefix="dockerconnect-oci-") as tmp:
        layout = write_oci_layout(Path(tmp) / "layout", content, tag=tag)
        command = [
            tool,
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]
        if credentials is not None:
            command.append(f"--dest-creds={credentials[0]}:{credentials[1]}")
        command += [f"oci:{layout}:{tag}", f"docker://{address}/{repository}:{tag}"]
        # A private auth file, so that the user's own credentials are not used.
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(Path(tmp) / "auth.json")}
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy failed ({done.returncode}):\n{done.stderr}{done.stdout}")


async def push_content(
    url: str,
    repository: str,
    content: RandomImage | RandomIndex,
    *,
    tags: Iterable[str] = ("latest",),
    auth: httpx.Auth | tuple[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> None:
    """Push ``content`` through the registry HTTP API (distribution-spec "Push").

    Each blob with ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>
    ?digest=…``; then child manifests by digest and the top manifest by digest
    and under each tag. Blobs already present (``HEAD``) are skipped. Raises
    ``RuntimeError`` with the registry's answer when a step fails.
    """
    owned = client is None
    http = client or httpx.AsyncClient(timeout=60.0)
    base = url.rstrip("/")
    try:
        for digest, data in content.blobs.items():
            await _push_blob(http, base, repository, digest, data, auth)
        top = content.manifest
        for digest, manifest in content.manifests.items():
            if digest != top.digest:
                await _put_manifest(http, base, repository, str(digest), manifest, auth)
        await _put_manifest(http, base, repository, str(top.digest), top, auth)
        for tag in tags:
            await _put_manifest(http, base, repository, tag, top, auth)
    finally:
        if owned:
            await http.aclose()


async def _push_blob(
    http: httpx.AsyncClient,
    base: str,
    repository: str,
    digest: Digest,
    data: bytes,
    auth: httpx.Auth | tuple[str, str] | None,
) -> None:
    blob_url = f"{base}/v2/{repository}/blobs/{digest}"
    head = await http.head(blob_url, auth=auth or httpx.USE_CLIENT_DEFAULT)
    if head.status_code == 200:
        return
    started = await http.post(
        f"{base}/v2/{repository}/blobs/uploads/", auth=auth or httpx.USE_CLIENT_DEFAULT
    )
    if started.status_code != 202 or "location" not in started.headers:
        raise RuntimeError(f"starting an upload answered {started.status_code}: {started.text}")
    location = started.url.join(started.headers["location"])
    location = location.copy_merge_params({"digest": str(digest)})
    done = await http.put(
        location,
        content=data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth or httpx.USE_CLIENT_DEFAULT,
    )
    if done.status_code != 201:
        raise RuntimeError(f"uploading {digest} answered {done.status_code}: {done.text}")


async def _put_manifest(
    http: httpx.AsyncClient,
    base: str,
    repository: str,
    reference: str,
    manifest: Manifest,
    auth: httpx.Auth | tuple[str, str] | None,
) -> None:
    response = await http.put(
        f"{base}/v2/{repository}/manifests/{reference}",
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
        auth=auth or httpx.USE_CLIENT_DEFAULT,
    )
    if response.status_code != 201:
        raise RuntimeError(
            f"pushing manifest {reference} answered {response.status_code}: {response.text}"
        )


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it has not exited in ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
