"""skopeo and podman log in to ``dockerconnect serve`` and push through it:
htpasswd basic auth, bearer tokens from a token server, and TLS; refused
without credentials. All real software on 127.0.0.1."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.http._token_server import TokenServer

from dockerconnect.testing import random_image
from dockerconnect.testing._images import write_oci_layout

pytestmark = pytest.mark.e2e

TIMEOUT = 90.0


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env)


class Client:
    """skopeo (or podman) with a private auth file."""

    def __init__(self, tmp_path: Path, tool: str) -> None:
        self.tool = tool
        self.tmp = tmp_path
        self.env = {
            **os.environ,
            "REGISTRY_AUTH_FILE": str(tmp_path / f"{tool}-auth.json"),
            "XDG_RUNTIME_DIR": str(tmp_path / f"{tool}-run"),
        }
        (tmp_path / f"{tool}-run").mkdir(exist_ok=True)
        (tmp_path / f"{tool}-auth.json").write_text('{"auths": {}}')
        # podman wants its runroot path short (at most 50 characters).
        self.storage = Path(tempfile.mkdtemp(prefix="dc-podman-")) if tool == "podman" else None

    def close(self) -> None:
        if self.storage is not None:
            shutil.rmtree(self.storage, ignore_errors=True)

    def base(self) -> list[str]:
        if self.storage is not None:
            storage = self.storage
            return [
                "podman",
                *("--root", str(storage / "root"), "--runroot", str(storage / "runroot")),
                *("--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"),
            ]
        return ["skopeo", "--insecure-policy"]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([*self.base(), *args], self.env)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{self.tool} {' '.join(args)}:\n{done.stderr}{done.stdout}"
        return done.stdout

    def refused(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode != 0, f"{self.tool} {' '.join(args)} was not refused"
        text = (done.stderr + done.stdout).lower()
        words = ("unauthorized", "authentication required", "401", "invalid username/password")
        assert any(word in text for word in words), text
        return text


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_oci_layout(tmp_path / "layout", random_image(seed=201, layers=2), tag="v1")


def _htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5)).decode()
    path.write_text(f"alice:{hashed}\n")
    return path


def test_skopeo_logs_in_with_htpasswd_and_pushes(
    tmp_path: Path, make_server: Any, layout: Path
) -> None:
    htpasswd = _htpasswd(tmp_path)
    server = make_server([], config=f'[auth]\nhtpasswd = "{htpasswd}"')
    skopeo = Client(tmp_path, "skopeo")
    dest = f"docker://{server.address}/team/app:v1"
    skopeo.refused("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", dest)
    skopeo.refused("login", "--tls-verify=false", "-u", "alice", "-p", "wrong", server.address)
    skopeo.ok("login", "--tls-verify=false", "-u", "alice", "-p", "s3cret", server.address)
    skopeo.ok("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", dest)
    # Anonymous pull (the default rule), once logged out.
    skopeo.ok("logout", server.address)
    raw = skopeo.ok("inspect", "--tls-verify=false", "--raw", dest)
    assert json.loads(raw)["schemaVersion"] == 2


def test_podman_logs_in_with_htpasswd_and_pushes(
    tmp_path: Path, make_server: Any, layout: Path
) -> None:
    if shutil.which("podman") is None:
        reason = "END-TO-END TEST NOT RUN: podman is not installed (apt-get install podman)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    htpasswd = _htpasswd(tmp_path)
    server = make_server([], config=f'[auth]\nhtpasswd = "{htpasswd}"')
    podman = Client(tmp_path, "podman")
    try:
        podman.ok("pull", f"oci:{layout}:v1")
        (image,) = podman.ok("images", "-q").split()
        dest = f"docker://{server.address}/team/app:v1"
        podman.refused("push", "--tls-verify=false", image, dest)
        login = ("login", "--tls-verify=false", "-u", "alice")
        podman.refused(*login, "-p", "wrong", server.address)
        podman.ok(*login, "-p", "s3cret", server.address)
        podman.ok("push", "--tls-verify=false", image, dest)
    finally:
        podman.close()
    status, _, body = server.request("GET", "/v2/team/app/tags/list")
    assert status == 200 and json.loads(body)["tags"] == ["v1"]


def test_skopeo_pushes_with_a_bearer_token(tmp_path: Path, make_server: Any, layout: Path) -> None:
    tokens = TokenServer(tmp_path, {"alice": "s3cret"})
    tokens.start()
    try:
        config = (
            "[auth.token]\n"
            f'realm = "{tokens.realm}"\nservice = "{tokens.service}"\n'
            f'issuer = "{tokens.issuer}"\npublic_key = "{tokens.rootcertbundle}"\n'
        )
        server = make_server([], config=config)
        skopeo = Client(tmp_path, "skopeo")
        dest = f"docker://{server.address}/team/app:v1"
        skopeo.refused("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", dest)
        skopeo.ok(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
            f"oci:{layout}:v1",
            dest,
        )
        # Anonymous pull: the token server grants pull to anyone.
        skopeo.ok("inspect", "--tls-verify=false", "--raw", dest)
        assert any(r["user"] == "alice" for r in tokens.requests)
        assert any(r["user"] is None for r in tokens.requests)
    finally:
        tokens.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_basic_auth(tmp_path: Path, make_server: Any, layout: Path) -> None:
    cert, key = _self_signed(tmp_path)
    htpasswd = _htpasswd(tmp_path)
    server = make_server(
        [],
        server=f'tls_cert = "{cert}"\ntls_key = "{key}"',
        config=f'[auth]\nhtpasswd = "{htpasswd}"',
        scheme="https",
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(cert, certs / "ca.crt")
    skopeo = Client(tmp_path, "skopeo")
    dest = f"docker://{server.address}/team/app:v1"
    source = f"oci:{layout}:v1"
    skopeo.refused("copy", "--dest-cert-dir", str(certs), source, dest)
    creds = ("--dest-creds", "alice:s3cret")
    skopeo.ok("copy", "--dest-cert-dir", str(certs), *creds, source, dest)
    skopeo.ok("inspect", "--cert-dir", str(certs), "--raw", dest)
