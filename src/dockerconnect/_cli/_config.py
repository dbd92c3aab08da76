"""The ``dockerconnect serve`` configuration: a TOML file and flags, checked up front.

Every mistake is a :class:`ConfigError` whose message is one line naming the
key and the problem (``connectors[1].password_env: the environment variable
HUB_TOKEN is not set``). Secrets never come from the command line: a
connector's password is read from an environment variable
(``password_env``) or a file (``password_file``).

The file's sections (all optional)::

    [server]      host, port, workers, log_level, name, admin, tls_cert, tls_key
    [store]       path (the directory for manifests, blobs, spool and uploads)
    [store.s3]    blobs in object storage: bucket, prefix, endpoint_url, region,
                  addressing_style, part_size, endpoint_url_env, access_key_id_env,
                  secret_access_key_env
    [store.redis] manifests, tags and fetch leases in Redis: url | url_env, prefix,
                  lease_ttl
    [uploads]     max_sessions, max_sessions_per_repository, ttl
    [policy]      any CachingPolicy field (tag_ttl, eager, platforms, ...)
    [retention]   RetentionPolicy fields, where this version has RetentionPolicy
    [health]      HealthPolicy fields, where this version has HealthPolicy
    [[connectors]]  url, name, include, exclude, prefix, username, username_env,
                    password_env, password_file, ca_file, verify_tls, connect_timeout,
                    policy = {...}; or type = "oci-layout" with path, repository,
                    name, include, exclude, policy = {...} (an OCI image layout directory)
    [auth]        htpasswd, realm; or [auth.token] realm, service, issuer,
                  public_key | jwks; and [[auth.rules]] repository, pull, push,
                  delete, admin
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

import dockerconnect
from dockerconnect import CachingPolicy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["AuthConfig", "ConfigError", "ConnectorConfig", "ServeConfig", "load_config"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """A configuration mistake: one line, naming the key and the problem."""


@attrs.define
class ConnectorConfig:
    """One connector: a registry over HTTP (``url``), or an OCI image layout
    directory (``type = "oci-layout"``: ``path``, ``repository``)."""

    url: str
    name: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    prefix: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    verify: str | bool = True
    policy: CachingPolicy | None = None
    connect_timeout: float | None = None
    key: str = "--upstream"
    type: str = "registry"
    path: Path | None = None
    repository: str | None = None


@attrs.define
class AuthConfig:
    htpasswd: Path | None = None
    realm: str = "dockerconnect"
    token: dict[str, Any] | None = None
    rules: list[dict[str, Any]] = attrs.field(factory=list)


@attrs.define
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    log_level: str = "info"
    name: str = "local"
    admin: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    store: Path | None = None
    #: ``S3BlobStore`` arguments (``[store.s3]``), or ``None``: blobs under ``store``.
    s3: dict[str, Any] | None = None
    #: ``RedisManifestStore`` / ``RedisFetchCoordinator`` arguments (``[store.redis]``).
    redis: dict[str, Any] | None = None
    connectors: list[ConnectorConfig] = attrs.field(factory=list)
    policy: CachingPolicy = attrs.field(factory=CachingPolicy)
    retention: Any = None
    health: Any = None
    max_sessions: int = 1000
    max_sessions_per_repository: int = 100
    upload_ttl: float = 24 * 3600.0
    auth: AuthConfig | None = None


# -- small checkers ------------------------------------------------------------


def _table(value: object, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table, not {type(value).__name__}")
    return value


def _known(table: Mapping[str, Any], key: str, known: Sequence[str]) -> None:
    for name in table:
        if name not in known:
            where = f"{key}.{name}" if key else name
            raise ConfigError(f"{where}: unknown key (known here: {', '.join(known)})")


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, not {value!r}")
    return value


def _int(value: object, key: str, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{key}: must be {bound}, not {value}")
    return value


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key}: must be a non-negative number of seconds, not {value!r}")
    return float(value)


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, not {value!r}")
    return value


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of strings, not {value!r}")
    return tuple(value)


def _file(value: object, key: str, base: Path) -> Path:
    path = base / _str(value, key)
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {path}")
    return path


def _attrs_from(cls: type[Any], table: Mapping[str, Any], key: str) -> Any:
    """An attrs class from a table, each value checked against the field's default."""
    fields = {f.name: f for f in attrs.fields(cls)}
    _known(table, key, list(fields))
    values: dict[str, Any] = {}
    for name, value in table.items():
        where = f"{key}.{name}"
        default = fields[name].default
        if isinstance(default, bool):
            values[name] = _bool(value, where)
        elif name == "platforms":
            values[name] = _strings(value, where)
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: must be a non-negative number, not {value!r}")
        else:
            values[name] = value
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _optional_policy(name: str, table: object, key: str) -> Any:
    cls = getattr(dockerconnect, name, None)
    if cls is None:
        raise ConfigError(
            f"{key}: not supported in this version of dockerconnect "
            f"({dockerconnect.__version__} has no {name}); remove the section"
        )
    return _attrs_from(cls, _table(table, key), key)


# -- connectors ------------------------------------------------------------------

_CONNECTOR_KEYS = (
    "url",
    "name",
    "include",
    "exclude",
    "prefix",
    "username",
    "username_env",
    "password_env",
    "password_file",
    "ca_file",
    "verify_tls",
    "policy",
    "connect_timeout",
)


def _env(value: object, key: str, environ: Mapping[str, str]) -> str:
    variable = _str(value, key)
    if variable not in environ:
        raise ConfigError(f"{key}: the environment variable {variable} is not set")
    return environ[variable]


_LAYOUT_KEYS = ("type", "path", "repository", "name", "include", "exclude", "policy")
_CONNECTOR_TYPES = ("registry", "oci-layout")


def _connector(
    table: dict[str, Any], key: str, base: Path, environ: Mapping[str, str]
) -> ConnectorConfig:
    kind = table.get("type", "registry")
    if kind not in _CONNECTOR_TYPES:
        raise ConfigError(f"{key}.type: must be one of {', '.join(_CONNECTOR_TYPES)}, not {kind!r}")
    if kind == "oci-layout":
        return _layout_connector(table, key, base)
    return _registry_connector({k: v for k, v in table.items() if k != "type"}, key, base, environ)


def _layout_connector(table: dict[str, Any], key: str, base: Path) -> ConnectorConfig:
    _known(table, key, _LAYOUT_KEYS)
    if "path" not in table:
        raise ConfigError(f"{key}.path: missing (the OCI image layout directory)")
    path = base / _str(table["path"], f"{key}.path")
    if not path.is_dir():
        raise ConfigError(f"{key}.path: no such directory {path}")
    if not (path / "oci-layout").is_file():
        raise ConfigError(f"{key}.path: {path} is not an OCI image layout (no oci-layout file)")
    return ConnectorConfig(
        "",
        name=_str(table["name"], f"{key}.name") if "name" in table else None,
        include=_strings(table.get("include", []), f"{key}.include"),
        exclude=_strings(table.get("exclude", []), f"{key}.exclude"),
        policy=_connector_policy(table, key),
        key=key,
        type="oci-layout",
        path=path,
        repository=(
            _str(table["repository"], f"{key}.repository") if "repository" in table else None
        ),
    )


def _connector_policy(table: Mapping[str, Any], key: str) -> CachingPolicy | None:
    if "policy" not in table:
        return None
    policy: CachingPolicy = _attrs_from(
        CachingPolicy, _table(table["policy"], f"{key}.policy"), f"{key}.policy"
    )
    return policy


def _credentials(
    table: dict[str, Any], key: str, base: Path, environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """A connector's username and password, from the environment or a file."""
    username = None
    if "username" in table:
        username = _str(table["username"], f"{key}.username")
    if "username_env" in table:
        username = _env(table["username_env"], f"{key}.username_env", environ)
    password = None
    if "password_env" in table and "password_file" in table:
        raise ConfigError(f"{key}: give password_env or password_file, not both")
    if "password_env" in table:
        password = _env(table["password_env"], f"{key}.password_env", environ)
    if "password_file" in table:
        path = _file(table["password_file"], f"{key}.password_file", base)
        password = path.read_text().strip()
    if (username is None) != (password is None):
        missing = "password_env or password_file" if password is None else "username"
        raise ConfigError(f"{key}: credentials need both a username and a password; add {missing}")
    return username, password


def _registry_connector(
    table: dict[str, Any], key: str, base: Path, environ: Mapping[str, str]
) -> ConnectorConfig:
    if "password" in table:
        raise ConfigError(
            f"{key}.password: passwords are not written in the config; "
            "use password_env (an environment variable) or password_file"
        )
    _known(table, key, _CONNECTOR_KEYS)
    if "url" not in table:
        raise ConfigError(f"{key}.url: missing (the registry's base URL)")
    url = _str(table["url"], f"{key}.url")
    username, password = _credentials(table, key, base, environ)
    verify: str | bool = True
    if "verify_tls" in table:
        verify = _bool(table["verify_tls"], f"{key}.verify_tls")
    if "ca_file" in table:
        verify = str(_file(table["ca_file"], f"{key}.ca_file", base))
    policy = _connector_policy(table, key)
    prefix = _str(table["prefix"], f"{key}.prefix") if "prefix" in table else None
    connect_timeout = None
    if "connect_timeout" in table:
        connect_timeout = _number(table["connect_timeout"], f"{key}.connect_timeout")
        if connect_timeout <= 0:
            raise ConfigError(f"{key}.connect_timeout: must be a positive number of seconds")
    return ConnectorConfig(
        url,
        name=_str(table["name"], f"{key}.name") if "name" in table else None,
        include=_strings(table.get("include", []), f"{key}.include"),
        exclude=_strings(table.get("exclude", []), f"{key}.exclude"),
        prefix=prefix,
        username=username,
        password=password,
        verify=verify,
        policy=policy,
        connect_timeout=connect_timeout,
        key=key,
    )


# -- shared stores ---------------------------------------------------------------------

_S3_KEYS = (
    "bucket",
    "prefix",
    "endpoint_url",
    "region",
    "addressing_style",
    "part_size",
    "endpoint_url_env",
    "access_key_id_env",
    "secret_access_key_env",
)
_REDIS_KEYS = ("url", "url_env", "prefix", "lease_ttl")


def _s3(table: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``S3BlobStore`` arguments; keys and secrets only through the environment."""
    for secret in ("access_key_id", "secret_access_key"):
        if secret in table:
            raise ConfigError(
                f"store.s3.{secret}: keys are not written in the config; use {secret}_env "
                "(an environment variable) or botocore's usual chain (AWS_* variables, roles)"
            )
    _known(table, "store.s3", _S3_KEYS)
    if "bucket" not in table:
        raise ConfigError("store.s3.bucket: missing (the bucket blobs are kept in; it must exist)")
    args: dict[str, Any] = {"bucket": _str(table["bucket"], "store.s3.bucket")}
    for name in ("prefix", "endpoint_url", "region"):
        if name in table:
            args[name] = _str(table[name], f"store.s3.{name}")
    if "endpoint_url_env" in table:
        if "endpoint_url" in table:
            raise ConfigError("store.s3: give endpoint_url or endpoint_url_env, not both")
        args["endpoint_url"] = _env(table["endpoint_url_env"], "store.s3.endpoint_url_env", environ)
    _s3_options(table, args, environ)
    return args


def _s3_options(table: dict[str, Any], args: dict[str, Any], environ: Mapping[str, str]) -> None:
    if "addressing_style" in table:
        style = table["addressing_style"]
        if style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"store.s3.addressing_style: must be auto, path or virtual, not {style!r}"
            )
        args["addressing_style"] = style
    if "part_size" in table:
        args["part_size"] = _int(
            table["part_size"], "store.s3.part_size", low=5 * 1024 * 1024, high=5 * 1024**3
        )
    for name in ("access_key_id", "secret_access_key"):
        if f"{name}_env" in table:
            args[name] = _env(table[f"{name}_env"], f"store.s3.{name}_env", environ)
    if ("access_key_id" in args) != ("secret_access_key" in args):
        raise ConfigError(
            "store.s3: give both access_key_id_env and secret_access_key_env, or neither"
        )


def _redis(table: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``RedisManifestStore`` / ``RedisFetchCoordinator`` arguments."""
    _known(table, "store.redis", _REDIS_KEYS)
    if ("url" in table) == ("url_env" in table):
        raise ConfigError(
            "store.redis: give url (redis://host:6379/0) or url_env "
            "(an environment variable holding it, for a URL with a password), not both or neither"
        )
    if "url" in table:
        url = _str(table["url"], "store.redis.url")
        if "@" in url:
            raise ConfigError(
                "store.redis.url: passwords are not written in the config; use url_env"
            )
    else:
        url = _env(table["url_env"], "store.redis.url_env", environ)
    if "://" not in url:
        raise ConfigError(f"store.redis: not a redis:// URL: {url.split('@')[-1]!r}")
    args: dict[str, Any] = {"url": url}
    if "prefix" in table:
        args["prefix"] = _str(table["prefix"], "store.redis.prefix")
    if "lease_ttl" in table:
        ttl = _number(table["lease_ttl"], "store.redis.lease_ttl")
        if ttl <= 0:
            raise ConfigError("store.redis.lease_ttl: must be a positive number of seconds")
        args["lease_ttl"] = ttl
    return args


# -- auth ----------------------------------------------------------------------------

_RULE_KEYS = ("repository", "pull", "push", "delete", "admin")
_TOKEN_KEYS = ("realm", "service", "issuer", "public_key", "jwks")


def _token(token: dict[str, Any], base: Path) -> dict[str, Any]:
    """``[auth.token]``: the token service's names and exactly one key source."""
    _known(token, "auth.token", _TOKEN_KEYS)
    for required in ("realm", "service", "issuer"):
        if required not in token:
            raise ConfigError(f"auth.token.{required}: missing")
        _str(token[required], f"auth.token.{required}")
    keys = [k for k in ("public_key", "jwks") if k in token]
    if len(keys) != 1:
        raise ConfigError("auth.token: give exactly one of public_key or jwks")
    token = dict(token)
    token[keys[0]] = _file(token[keys[0]], f"auth.token.{keys[0]}", base)
    return token


def _rules(rules: Any) -> list[dict[str, Any]]:
    """``[[auth.rules]]``: who may do what, per repository pattern."""
    if not isinstance(rules, list):
        raise ConfigError("auth.rules: must be an array of tables ([[auth.rules]])")
    out: list[dict[str, Any]] = []
    for index, rule in enumerate(rules):
        key = f"auth.rules[{index}]"
        rule = _table(rule, key)
        _known(rule, key, _RULE_KEYS)
        for action in _RULE_KEYS[1:]:
            value = rule.get(action, "anyone")
            ok = value in ("anyone", "authenticated", "nobody") or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
            if not ok:
                raise ConfigError(
                    f"{key}.{action}: must be anyone, authenticated, nobody "
                    f"or a list of user names, not {value!r}"
                )
        out.append(dict(rule))
    return out


def _auth(table: dict[str, Any], base: Path) -> AuthConfig:
    _known(table, "auth", ("htpasswd", "realm", "token", "rules"))
    config = AuthConfig()
    if "htpasswd" in table:
        config.htpasswd = _file(table["htpasswd"], "auth.htpasswd", base)
    if "realm" in table:
        config.realm = _str(table["realm"], "auth.realm")
    if "token" in table:
        config.token = _token(_table(table["token"], "auth.token"), base)
    if config.htpasswd is not None and config.token is not None:
        raise ConfigError("auth: give htpasswd or [auth.token], not both")
    if config.htpasswd is None and config.token is None:
        raise ConfigError("auth: needs htpasswd = FILE or an [auth.token] table")
    config.rules = _rules(table.get("rules", []))
    return config


# -- the file ------------------------------------------------------------------------

_SECTIONS = (
    "server",
    "store",
    "uploads",
    "policy",
    "retention",
    "health",
    "connectors",
    "auth",
)
_SERVER_KEYS = ("host", "port", "workers", "log_level", "name", "admin", "tls_cert", "tls_key")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """A :class:`ServeConfig` from a TOML file (relative paths are relative to
    the file), or the defaults without one."""
    environ = os.environ if environ is None else environ
    config = ServeConfig()
    if path is None:
        return config
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {file}") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    base = file.resolve().parent
    _known(document, "", _SECTIONS)
    _server(config, _table(document.get("server", {}), "server"), base)
    _store(config, _table(document.get("store", {}), "store"), base, environ)
    _uploads(config, _table(document.get("uploads", {}), "uploads"))
    _policies(config, document)
    connectors = document.get("connectors", [])
    if not isinstance(connectors, list):
        raise ConfigError("connectors: must be an array of tables ([[connectors]])")
    for index, table in enumerate(connectors):
        key = f"connectors[{index}]"
        config.connectors.append(_connector(_table(table, key), key, base, environ))
    if "auth" in document:
        config.auth = _auth(_table(document["auth"], "auth"), base)
    return config


def _store(
    config: ServeConfig, store: dict[str, Any], base: Path, environ: Mapping[str, str]
) -> None:
    _known(store, "store", ("path", "s3", "redis"))
    if "path" in store:
        config.store = base / _str(store["path"], "store.path")
    if "s3" in store:
        config.s3 = _s3(_table(store["s3"], "store.s3"), environ)
    if "redis" in store:
        config.redis = _redis(_table(store["redis"], "store.redis"), environ)


def _server(config: ServeConfig, server: dict[str, Any], base: Path) -> None:
    _known(server, "server", _SERVER_KEYS)
    if "host" in server:
        config.host = _str(server["host"], "server.host")
    if "port" in server:
        config.port = _int(server["port"], "server.port", low=0, high=65535)
    if "workers" in server:
        config.workers = _int(server["workers"], "server.workers", low=1, high=256)
    if "log_level" in server:
        config.log_level = log_level(server["log_level"], "server.log_level")
    if "name" in server:
        config.name = _str(server["name"], "server.name")
    if "admin" in server:
        config.admin = _bool(server["admin"], "server.admin")
    if "tls_cert" in server:
        config.tls_cert = _file(server["tls_cert"], "server.tls_cert", base)
    if "tls_key" in server:
        config.tls_key = _file(server["tls_key"], "server.tls_key", base)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("server: TLS needs both tls_cert and tls_key")


def _uploads(config: ServeConfig, uploads: dict[str, Any]) -> None:
    _known(uploads, "uploads", ("max_sessions", "max_sessions_per_repository", "ttl"))
    if "max_sessions" in uploads:
        config.max_sessions = _int(uploads["max_sessions"], "uploads.max_sessions", low=1)
    if "max_sessions_per_repository" in uploads:
        config.max_sessions_per_repository = _int(
            uploads["max_sessions_per_repository"], "uploads.max_sessions_per_repository", low=1
        )
    if "ttl" in uploads:
        config.upload_ttl = _number(uploads["ttl"], "uploads.ttl")


def _policies(config: ServeConfig, document: Mapping[str, Any]) -> None:
    if "policy" in document:
        config.policy = _attrs_from(CachingPolicy, _table(document["policy"], "policy"), "policy")
    if "retention" in document:
        config.retention = _optional_policy("RetentionPolicy", document["retention"], "retention")
    if "health" in document:
        config.health = _optional_policy("HealthPolicy", document["health"], "health")


def log_level(value: object, key: str) -> str:
    level = _str(value, key).lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"{key}: must be one of {', '.join(_LOG_LEVELS)}, not {value!r}")
    return level
