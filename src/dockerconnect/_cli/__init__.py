"""``dockerconnect serve``: the registry API over a Resolver, with uvicorn
(and ``dockerconnect export``, :func:`dockerconnect.layout._cli.export_main`).

Flags cover the common case; ``--config FILE`` (TOML, see ``_config``) the
rest. Flags win over the file where both say something; ``--upstream`` URLs
are added after the file's connectors, in the order given. A bad
configuration is one line on stderr naming the key and the problem, and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio

from dockerconnect import (
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect._cli._config import (
    ConfigError,
    ConnectorConfig,
    ServeConfig,
    load_config,
    log_level,
)
from dockerconnect._cli._tuning import bound_read_ahead, limit_malloc_arenas
from dockerconnect.errors import DockerConnectError, StorageError

__all__ = ["ConfigError", "build_app", "build_resolver", "main", "parse_serve", "uvicorn_options"]

log = logging.getLogger("dockerconnect.serve")

_ARGV_ENV = "DOCKERCONNECT_SERVE_ARGV"
#: How long the start-up check waits for each connector's ``/v2/``.
PING_TIMEOUT = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockerconnect")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the registry API over a store and upstream registries",
        description="Serve the OCI distribution API over a Resolver (a pull-through cache "
        "and registry). Credentials come from --config, never the command line.",
    )
    serve.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 5000)")
    serve.add_argument("--store", metavar="DIR", help="directory for manifests, blobs, uploads")
    serve.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="a registry to connect, repeatable, in priority order",
    )
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--log-level", help="critical, error, warning, info (default), debug")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    commands.add_parser(
        "export",
        add_help=False,
        help="write images as an OCI image layout (dockerconnect export --help)",
    )
    return parser


def parse_serve(argv: Sequence[str], environ: Any = None) -> ServeConfig:
    """The configuration ``dockerconnect serve ARGV`` runs with (``ConfigError``)."""
    args = _parser().parse_args(["serve", *argv])
    config = load_config(args.config, environ=environ)
    _apply_server_flags(config, args)
    _apply_tls_flags(config, args)
    for url in args.upstream:
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise ConfigError(
                "--upstream: credentials are not taken from the command line; "
                "put the connector in --config with password_env or password_file"
            )
        config.connectors.append(ConnectorConfig(url))
    if config.workers > 1 and config.store is None and (config.s3 is None or config.redis is None):
        raise ConfigError("--workers: several workers need --store (one store they share)")
    return config


def _apply_server_flags(config: ServeConfig, args: argparse.Namespace) -> None:
    """``--host``, ``--port``, ``--workers``, ``--log-level`` and ``--store`` over the file's."""
    if args.host is not None:
        config.host = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError(f"--port: must be between 0 and 65535, not {args.port}")
        config.port = args.port
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers: must be at least 1, not {args.workers}")
        config.workers = args.workers
    if args.log_level is not None:
        config.log_level = log_level(args.log_level, "--log-level")
    if args.store is not None:
        config.store = Path(args.store)


def _apply_tls_flags(config: ServeConfig, args: argparse.Namespace) -> None:
    for flag, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{flag}: no such file {value}")
    if args.tls_cert is not None:
        config.tls_cert = Path(args.tls_cert)
    if args.tls_key is not None:
        config.tls_key = Path(args.tls_key)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert/--tls-key: TLS needs both a certificate and its key")


def _connector(spec: ConnectorConfig) -> Any:
    if spec.type == "oci-layout":
        return _layout_connector(spec)
    from dockerconnect.http import HttpConnector

    credentials = None
    if spec.username is not None and spec.password is not None:
        credentials = (spec.username, spec.password)
    try:
        return HttpConnector(
            spec.url,
            name=spec.name,
            credentials=credentials,
            include=spec.include,
            exclude=spec.exclude,
            prefix=spec.prefix,
            verify=spec.verify,
            connect_timeout=spec.connect_timeout,
            # No verify_blobs=False: the Resolver defers a stream's own
            # verification to its flight, so each byte is hashed once anyway.
        )
    except (DockerConnectError, ValueError, TypeError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"{spec.key}: {message}") from None


def _layout_connector(spec: ConnectorConfig) -> Any:
    from dockerconnect.layout import OciLayoutConnector

    assert spec.path is not None
    try:
        return OciLayoutConnector(
            spec.path,
            name=spec.name,
            include=spec.include,
            exclude=spec.exclude,
            repository=spec.repository,
        )
    except (DockerConnectError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"{spec.key}: {message}") from None


def build_resolver(config: ServeConfig) -> Resolver:
    """The Resolver a configuration describes: filesystem stores under
    ``config.store`` (memory without one), a connector per entry, in order."""
    import dockerconnect

    connectors = [_connector(spec) for spec in config.connectors]
    names = [c.name for c in connectors]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"connectors: two connectors are named {name!r}; give each a name")
    pairs = zip(connectors, config.connectors, strict=True)
    overrides = {c.name: s.policy for c, s in pairs if s.policy is not None}
    extra: dict[str, Any] = {}
    if config.retention is not None:
        extra["retention"] = config.retention
    if config.health is not None and hasattr(dockerconnect, "HealthPolicy"):
        extra["health"] = config.health
    manifests, blobs = _stores(config, extra)
    try:
        return Resolver(
            config.name,
            manifests=manifests,
            blobs=blobs,
            connectors=connectors,
            policy=config.policy,
            overrides=overrides,
            **extra,
        )
    except DockerConnectError as exc:
        # Such as [retention] over a blob store that cannot record use (S3).
        where = "retention" if config.retention is not None and "prune" in exc.message else "config"
        raise ConfigError(f"{where}: {exc.message}") from None


def _stores(config: ServeConfig, extra: dict[str, Any]) -> tuple[Any, Any]:
    """The manifest and blob stores a configuration names (memory without
    any), adding the spool directory and fetch coordinator to ``extra``."""
    manifests: Any = MemoryManifestStore()
    blobs: Any = MemoryBlobStore()
    if config.store is not None:
        store = config.store.resolve()
        spool = store / "spool"
        try:
            # Shared fetches spool next to the store rather than to the system
            # temporary directory, which may be a RAM-backed tmpfs.
            spool.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--store: cannot create {spool}: {exc.strerror}") from None
        extra["spool_dir"] = str(spool)
        try:
            manifests = FilesystemManifestStore(store)
            blobs = FilesystemBlobStore(store, name=config.name)
        except StorageError as exc:
            raise ConfigError(f"--store: {exc.message}") from None
    if config.s3 is not None:
        blobs = _shared("s3", "S3BlobStore", "store.s3", config.s3)
    if config.redis is not None:
        redis = config.redis
        store_args = {k: v for k, v in redis.items() if k != "lease_ttl"}
        manifests = _shared("redis", "RedisManifestStore", "store.redis", store_args)
        extra["coordinator"] = _shared("redis", "RedisFetchCoordinator", "store.redis", redis)
    return manifests, blobs


def _shared(extra: str, name: str, key: str, args: dict[str, Any]) -> Any:
    """A shared backend from ``dockerconnect.<extra>``, or one line saying what to install."""
    import importlib

    try:
        module = importlib.import_module(f"dockerconnect.{extra}")
    except ImportError:
        raise ConfigError(
            f"{key}: needs the {extra} extra: pip install 'dockerconnect[{extra}]'"
        ) from None
    try:
        return getattr(module, name)(**args)
    except DockerConnectError as exc:
        raise ConfigError(f"{key}: {exc.message}") from None


def _closers(resolver: Resolver) -> list[Any]:
    """What the app closes at shutdown: connectors' clients, shared stores' pools."""
    owned = [*resolver.connectors, resolver.blobs, resolver.manifests, resolver.coordinator]
    return [r for r in owned if isinstance(r, AbstractAsyncContextManager)]


def _authentication(config: ServeConfig) -> tuple[Any, Any]:
    from dockerconnect.asgi import HtpasswdAuthenticator, Rule, RuleAuthorizer, TokenAuthenticator

    auth = config.auth
    if auth is None:
        return None, None
    try:
        if auth.htpasswd is not None:
            authenticator: Any = HtpasswdAuthenticator(auth.htpasswd, realm=auth.realm)
        else:
            assert auth.token is not None
            authenticator = TokenAuthenticator(**auth.token)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"auth: {exc}") from None
    rules = []
    for rule in auth.rules:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in rule.items()
        }
        rules.append(Rule(**fields))
    return authenticator, RuleAuthorizer(rules)


async def check_connectors(resolver: Resolver) -> dict[str, str | None]:
    """Ask every connector's ``/v2/`` once; log loudly about any that does not answer.

    Returns each connector's problem (None: it answered). Start-up goes on
    either way: an upstream may come back, and the cache serves what it holds.
    """
    problems: dict[str, str | None] = {}
    for connector in list(resolver.connectors):
        ping = getattr(connector, "ping", None)
        if ping is None:
            continue
        try:
            with anyio.fail_after(PING_TIMEOUT):
                seconds = await ping()
        except (DockerConnectError, TimeoutError) as exc:
            problem = str(exc) or f"no answer within {PING_TIMEOUT:g}s"
            problems[connector.name] = problem
            log.error(
                "UPSTREAM UNREACHABLE: connector %r did not answer: %s; requests it would "
                "serve will fail or be served stale until it does",
                connector.name,
                problem,
            )
        else:
            problems[connector.name] = None
            log.info("connector %r answered in %.3fs", connector.name, seconds)
    return problems


def build_app(config: ServeConfig) -> Any:
    """The ASGI application ``dockerconnect serve`` runs for ``config``."""
    from dockerconnect.asgi import create_app

    resolver = build_resolver(config)
    authenticator, authorizer = _authentication(config)
    blobs = resolver.blobs
    blob_path = blobs.blob_path if isinstance(blobs, FilesystemBlobStore) else None
    upload_dir = None if config.store is None else config.store.resolve() / "uploads"

    async def startup() -> None:
        where = config.store.resolve() if config.store is not None else "memory (lost at exit)"
        log.info("store: %s; blobs: %r; manifests: %r", where, resolver.blobs, resolver.manifests)
        log.info(
            "connectors, in order: %s",
            ", ".join(c.name for c in resolver.connectors) or "(none: a plain registry)",
        )
        await check_connectors(resolver)

    return create_app(
        resolver,
        upload_dir=upload_dir,
        blob_path=blob_path,
        admin=config.admin,
        authenticator=authenticator,
        authorizer=authorizer,
        max_sessions=config.max_sessions,
        max_sessions_per_repository=config.max_sessions_per_repository,
        upload_ttl=config.upload_ttl,
        # Each HttpConnector owns an httpx client; close it at shutdown even
        # if an administrator removed the connector meanwhile.
        resources=_closers(resolver),
        startup=startup,
    )


def worker_app() -> Any:
    """The application factory each uvicorn worker process calls (``--workers``)."""
    config = parse_serve(json.loads(os.environ[_ARGV_ENV]))
    _logging(config.log_level)  # a fresh process: configure its logging too
    _tune()
    return build_app(config)


def _tune() -> None:
    """The server process's own tuning (``_tuning``), before any thread starts."""
    bound_read_ahead()
    limit_malloc_arenas()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=logging.DEBUG if level == "trace" else level.upper(),
        # The pid tells the lines of --workers' processes apart.
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s",
    )


def serve(argv: Sequence[str]) -> int:
    try:
        config = parse_serve(argv)
        app = build_app(config)
    except ConfigError as exc:
        print(f"dockerconnect serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    _logging(config.log_level)
    _tune()
    options = uvicorn_options(config)
    if config.workers > 1:
        os.environ[_ARGV_ENV] = json.dumps(list(argv))
        uvicorn.run(
            "dockerconnect._cli:worker_app", factory=True, workers=config.workers, **options
        )
    else:
        uvicorn.run(app, **options)
    return 0


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """The keyword arguments ``dockerconnect serve`` gives ``uvicorn.run``."""
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "loop": "auto",  # uvloop and httptools when installed
        "http": "auto",
        # The registry API has no WebSocket routes: without this, uvicorn
        # imports the websockets package (about 1 MiB resident) when installed.
        "ws": "none",
        "lifespan": "on",
        "log_level": config.log_level,
        "access_log": False,  # dockerconnect.asgi.access logs each request
    }
    if config.tls_cert is not None:
        options["ssl_certfile"] = str(config.tls_cert)
        options["ssl_keyfile"] = str(config.tls_key)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dockerconnect`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "export":
        from dockerconnect.layout._cli import export_main

        return export_main(args[1:])
    if not args or args[0] != "serve":
        _parser().parse_args(args)  # prints usage and exits
        return 2
    return serve(args[1:])
