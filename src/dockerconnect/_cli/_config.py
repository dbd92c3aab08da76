"""The ``dockerconnect serve`` configuration: a TOML file and flags, checked up front.

Every mistake is a :class:`ConfigError` whose message is one line naming the
key and the problem (``connectors[1].password_env: the environment variable
HUB_TOKEN is not set``). Secrets never come from the command line: a
connector's password is read from an environment variable
(``password_env``) or a file (``password_file``).

The file's sections (all optional)::

    [server]      host, port, workers, log_level, name, admin, tls_cert, tls_key
    [store]       path (the directory for manifests, blobs, spool and uploads)
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


# -- auth ----------------------------------------------------------------------------

_RULE_KEYS = ("repository", "pull", "push", "delete", "admin")
_TOKEN_KEYS = ("realm", "service", "issuer", "public_key", "jwks")


def _auth(table: dict[str, Any], base: Path) -> AuthConfig:
    _known(table, "auth", ("htpasswd", "realm", "token", "rules"))
    config = AuthConfig()
    if "htpasswd" in table:
        config.htpasswd = _file(table["htpasswd"], "auth.htpasswd", base)
    if "realm" in table:
        config.realm = _str(table["realm"], "auth.realm")
    if "token" in table:
        token = _table(table["token"], "auth.token")
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
        config.token = token
    if config.htpasswd is not None and config.token is not None:
        raise ConfigError("auth: give htpasswd or [auth.token], not both")
    if config.htpasswd is None and config.token is None:
        raise ConfigError("auth: needs htpasswd = FILE or an [auth.token] table")
    rules = table.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("auth.rules: must be an array of tables ([[auth.rules]])")
    for index, rule in enumerate(rules):
        key = f"auth.rules[{index}]"
        rule = _table(rule, key)
        _known(rule, key, _RULE_KEYS)
        for action in _RULE_KEYS[1:]:
            if action in rule:
                value = rule[action]
                ok = value in ("anyone", "authenticated", "nobody") or (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)
                )
                if not ok:
                    raise ConfigError(
                        f"{key}.{action}: must be anyone, authenticated, nobody "
                        f"or a list of user names, not {value!r}"
                    )
        config.rules.append(dict(rule))
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
    store = _table(document.get("store", {}), "store")
    _known(store, "store", ("path",))
    if "path" in store:
        config.store = base / _str(store["path"], "store.path")
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
