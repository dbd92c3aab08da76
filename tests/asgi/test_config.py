"""``dockerconnect serve``: flags, the TOML file, and one line per mistake.

Every row of the misconfiguration table in docs/guides/server.md is a case
here: the mistake is made and the exact line the table shows is asserted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

import dockerconnect
from dockerconnect import FilesystemBlobStore, MemoryBlobStore
from dockerconnect._cli import build_app, build_resolver, check_connectors, main, parse_serve
from dockerconnect._cli._config import ConfigError
from dockerconnect.asgi import HtpasswdAuthenticator
from dockerconnect.testing import random_image

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "guides" / "server.md"


@attrs.frozen
class Case:
    id: str
    toml: str | None
    message: str
    flags: tuple[str, ...] = ()
    env: dict[str, str] = attrs.field(factory=dict)
    files: tuple[str, ...] = ()  # created next to the config file
    when: bool = True  # whether this version of dockerconnect can show it


CASES = [
    Case("port-type", '[server]\nport = "5000"', "server.port: must be an integer, not '5000'"),
    Case("workers", "[server]\nworkers = 0", "server.workers: must be between 1 and 256, not 0"),
    Case(
        "log-level",
        '[server]\nlog_level = "loud"',
        "server.log_level: must be one of critical, error, warning, info, debug, trace, not 'loud'",
    ),
    Case(
        "section",
        "[stores]\npath = 'x'",
        "stores: unknown key (known here: server, store, uploads, policy, retention, "
        "health, connectors, auth)",
    ),
    Case(
        "policy-key",
        "[policy]\ntag_tl = 5",
        "policy.tag_tl: unknown key (known here: cache_manifests, cache_blobs, eager, "
        "platforms, tag_ttl, negative_ttl, stale_if_error, max_blob_size, pin_on_push)",
        when=[f.name for f in attrs.fields(dockerconnect.CachingPolicy)]
        == [
            "cache_manifests",
            "cache_blobs",
            "eager",
            "platforms",
            "tag_ttl",
            "negative_ttl",
            "stale_if_error",
            "max_blob_size",
            "pin_on_push",
        ],
    ),
    Case(
        "policy-value",
        "[policy]\ntag_ttl = -1",
        "policy.tag_ttl: must be a non-negative number, not -1",
    ),
    Case(
        "no-url",
        '[[connectors]]\nname = "hub"',
        "connectors[0].url: missing (the registry's base URL)",
    ),
    Case(
        "password-in-file",
        '[[connectors]]\nurl = "https://r.example"\nusername = "me"\npassword = "x"',
        "connectors[0].password: passwords are not written in the config; use password_env "
        "(an environment variable) or password_file",
    ),
    Case(
        "password-env",
        '[[connectors]]\nurl = "https://r.example"\nusername = "me"\npassword_env = "HUB_TOKEN"',
        "connectors[0].password_env: the environment variable HUB_TOKEN is not set",
    ),
    Case(
        "half-credentials",
        '[[connectors]]\nurl = "https://r.example"\nusername = "me"',
        "connectors[0]: credentials need both a username and a password; add password_env "
        "or password_file",
    ),
    Case(
        "password-file",
        '[[connectors]]\nurl = "https://r.example"\nusername = "me"\npassword_file = "hub.secret"',
        "connectors[0].password_file: no such file {dir}/hub.secret",
    ),
    Case(
        "same-name",
        '[[connectors]]\nurl = "https://r.example"\n[[connectors]]\nurl = "https://r.example"',
        "connectors: two connectors are named 'r.example'; give each a name",
    ),
    Case(
        "tls-half",
        '[server]\ntls_cert = "cert.pem"',
        "server: TLS needs both tls_cert and tls_key",
        files=("cert.pem",),
    ),
    Case(
        "auth-empty",
        '[auth]\nrealm = "corp"',
        "auth: needs htpasswd = FILE or an [auth.token] table",
    ),
    Case(
        "rule",
        '[auth]\nhtpasswd = "htpasswd"\n[[auth.rules]]\nrepository = "*"\npush = "everyone"',
        "auth.rules[0].push: must be anyone, authenticated, nobody or a list of user names, "
        "not 'everyone'",
        files=("htpasswd",),
    ),
    Case(
        "retention",
        "[retention]\nmax_bytes = 1000000000",
        "retention: not supported in this version of dockerconnect "
        f"({dockerconnect.__version__} has no RetentionPolicy); remove the section",
        when=not hasattr(dockerconnect, "RetentionPolicy"),
    ),
    Case(
        "health",
        "[health]\nfailures = -1",
        "health.failures: must be a non-negative number, not -1",
    ),
    Case(
        "toml",
        "[server\nport = 1",
        "{file}: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 8)",
    ),
    Case(
        "no-config",
        None,
        "--config: no such file {dir}/missing.toml",
        flags=("--config", "{dir}/missing.toml"),
    ),
    Case(
        "upstream-credentials",
        None,
        "--upstream: credentials are not taken from the command line; put the connector in "
        "--config with password_env or password_file",
        flags=("--upstream", "https://me:secret@r.example"),
    ),
    Case(
        "workers-memory",
        None,
        "--workers: several workers need --store (one store they share)",
        flags=("--workers", "2"),
    ),
    Case(
        "connector-type",
        '[[connectors]]\ntype = "oci"\npath = "mirror"',
        "connectors[0].type: must be one of registry, oci-layout, not 'oci'",
    ),
    Case(
        "layout-path",
        '[[connectors]]\ntype = "oci-layout"\npath = "mirror"',
        "connectors[0].path: no such directory {dir}/mirror",
    ),
    Case(
        "layout-not-a-layout",
        '[[connectors]]\ntype = "oci-layout"\npath = "."',
        "connectors[0].path: {dir} is not an OCI image layout (no oci-layout file)",
    ),
    Case(
        "layout-key",
        '[[connectors]]\ntype = "oci-layout"\nurl = "https://r.example"',
        "connectors[0].url: unknown key (known here: type, path, repository, name, include, "
        "exclude, policy)",
    ),
]


def _run(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    flags = [f.replace("{dir}", str(tmp_path)) for f in case.flags]
    config = tmp_path / "serve.toml"
    for name in case.files:
        (tmp_path / name).write_text("")
    if case.toml is not None:
        config.write_text(case.toml)
        flags = ["--config", str(config), *flags]
    expected = case.message.replace("{dir}", str(tmp_path)).replace("{file}", str(config))
    saved = dict(os.environ)
    os.environ.pop("HUB_TOKEN", None)
    try:
        status = main(["serve", *flags])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return status, capsys.readouterr().err, expected


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_mistake_gets_one_line(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not case.when:
        pytest.skip("this version of dockerconnect accepts it")
    status, err, expected = _run(case, tmp_path, capsys)
    assert status == 2
    assert err == f"dockerconnect serve: {expected}\n"


def test_the_docs_table_is_these_cases() -> None:
    text = DOCS.read_text()
    table = text[text.index("<!-- misconfiguration table -->") :]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(CASES)
    for case, row in zip(CASES, rows, strict=True):
        assert f"`{case.message}`" in row, (case.id, row)


def test_a_bad_config_from_the_console_prints_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("[server]\nport = 70000\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "dockerconnect", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr == "dockerconnect serve: server.port: must be between 0 and 65535, not 70000\n"
    )


def test_a_full_config(tmp_path: Path) -> None:
    (tmp_path / "hub.secret").write_text("tok3n\n")
    (tmp_path / "htpasswd").write_text("alice:$2b$04$" + "a" * 53 + "\n")
    (tmp_path / "serve.toml").write_text(
        """
[server]
host = "0.0.0.0"
port = 5001
name = "mirror"
admin = true

[store]
path = "store"

[uploads]
max_sessions = 10
max_sessions_per_repository = 2
ttl = 3600

[policy]
tag_ttl = 60
eager = true
platforms = ["linux/amd64"]

[[connectors]]
url = "https://hub.example"
name = "hub"
include = ["library/*"]
username_env = "HUB_USER"
password_file = "hub.secret"
policy = { tag_ttl = 5 }

[[connectors]]
url = "http://127.0.0.1:1"
exclude = ["private/*"]
prefix = "mirror"

[auth]
htpasswd = "htpasswd"

[[auth.rules]]
repository = "private/*"
pull = "authenticated"
push = ["alice"]
"""
    )
    config = parse_serve(
        [
            "--config",
            str(tmp_path / "serve.toml"),
            "--port",
            "6000",
            "--upstream",
            "https://x.example",
        ],
        environ={"HUB_USER": "me"},
    )
    assert (config.host, config.port, config.name, config.admin) == (
        "0.0.0.0",
        6000,
        "mirror",
        True,
    )
    assert config.store == tmp_path / "store"
    hub = config.connectors[0]
    assert (hub.username, hub.password, hub.include) == ("me", "tok3n", ("library/*",))
    assert "tok3n" not in repr(hub)
    assert [c.url for c in config.connectors] == [
        "https://hub.example",
        "http://127.0.0.1:1",
        "https://x.example",
    ]
    resolver = build_resolver(config)
    assert [c.name for c in resolver.connectors] == ["hub", "127.0.0.1:1", "x.example"]
    assert isinstance(resolver.blobs, FilesystemBlobStore)
    assert resolver.policy.tag_ttl == 60 and resolver.policy.eager
    assert resolver.overrides["hub"].tag_ttl == 5
    app = build_app(config)
    assert isinstance(app.authenticator, HtpasswdAuthenticator)
    assert app.uploads.max_per_repository == 2
    assert app.uploads.directory == (tmp_path / "store" / "uploads").resolve()


def test_without_a_store_the_stores_are_in_memory() -> None:
    resolver = build_resolver(parse_serve([]))
    assert isinstance(resolver.blobs, MemoryBlobStore)
    with pytest.raises(ConfigError, match=r"--port: must be between"):
        parse_serve(["--port", "99999"])


@pytest.mark.anyio
async def test_an_unreachable_connector_is_logged_loudly_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resolver = build_resolver(parse_serve(["--upstream", f"http://127.0.0.1:{port}"]))
    async with resolver:
        with caplog.at_level(logging.ERROR, logger="dockerconnect.serve"):
            problems = await check_connectors(resolver)
        for connector in resolver.connectors:
            await connector.aclose()  # type: ignore[attr-defined]
    assert list(problems) == [f"127.0.0.1:{port}"] and problems[f"127.0.0.1:{port}"]
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert re.match(
        rf"UPSTREAM UNREACHABLE: connector '127.0.0.1:{port}' did not answer", record.getMessage()
    )


def test_tls_flags(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("")
    key.write_text("")
    config = parse_serve(["--tls-cert", str(cert), "--tls-key", str(key)])
    assert (config.tls_cert, config.tls_key) == (cert, key)
    with pytest.raises(ConfigError, match=r"^--tls-cert/--tls-key: TLS needs both"):
        parse_serve(["--tls-cert", str(cert)])
    with pytest.raises(ConfigError, match=r"^--tls-key: no such file"):
        parse_serve(["--tls-cert", str(cert), "--tls-key", str(tmp_path / "nope.pem")])


# -- an OCI image layout as a connector; dockerconnect export ---------------------------


def _layout(root: Path) -> Any:
    from tests.layout._layouts import write_layout

    image = random_image(seed=91)
    write_layout(root, {"v1": image})
    return image


@pytest.mark.anyio
async def test_an_oci_layout_connector_in_the_config_serves_its_images(tmp_path: Path) -> None:
    from dockerconnect.layout import OciLayoutConnector

    image = _layout(tmp_path / "carried")
    (tmp_path / "serve.toml").write_text(
        '[[connectors]]\ntype = "oci-layout"\npath = "carried"\nname = "usb"\n'
        'include = ["mirror/*"]\n\n[[connectors]]\nurl = "https://r.example"\n'
    )
    config = parse_serve(["--config", str(tmp_path / "serve.toml")])
    resolver = build_resolver(config)
    layout = resolver.connectors[0]
    assert isinstance(layout, OciLayoutConnector)
    assert layout.name == "usb" and layout.root == (tmp_path / "carried").resolve()
    assert layout.serves("mirror/app") and not layout.serves("other/app")
    async with resolver:
        assert (await resolver.get_manifest("mirror/app", "v1")).digest == image.manifest.digest
        for connector in resolver.connectors[1:]:
            await connector.aclose()  # type: ignore[attr-defined]


def test_dockerconnect_export_runs_export_main(tmp_path: Path) -> None:
    image = _layout(tmp_path / "carried")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    command = [sys.executable, "-m", "dockerconnect", "export", "--quiet"]
    command += ["--layout", str(tmp_path / "carried"), "--output", str(tmp_path / "out")]
    done = subprocess.run(
        [*command, "any/app", "v1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [str(image.manifest.digest)]
    bad = subprocess.run(
        [sys.executable, "-m", "dockerconnect", "export", "any/app", "v1", "-o", "x"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "dockerconnect export: error: nothing to export from" in bad.stderr


def test_the_health_section_reaches_the_resolver(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text("[health]\nfailures = 5\nopen_for = 2.5\n")
    resolver = build_resolver(parse_serve(["--config", str(tmp_path / "serve.toml")]))
    policy = resolver._sources.health.policy
    assert policy == dockerconnect.HealthPolicy(failures=5, open_for=2.5)
