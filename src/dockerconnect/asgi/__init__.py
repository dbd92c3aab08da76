"""The OCI distribution API over any :class:`dockerconnect.Registry`, as an ASGI app.

Needs the ``server`` extra (``pip install 'dockerconnect[server]'``).
:func:`create_app` returns an ASGI 3.0 application, written directly
against the ASGI spec, that any ASGI server runs and any ASGI framework
mounts:

================================================  =====================================
``GET /v2/``                                      API version check
``GET|HEAD /v2/<name>/manifests/<ref>``           pull a manifest (``Accept`` negotiated)
``PUT /v2/<name>/manifests/<ref>``                push a manifest (at most 4 MiB)
``DELETE /v2/<name>/manifests/<ref>``             delete a tag, or a manifest by digest
``GET|HEAD /v2/<name>/blobs/<digest>``            pull a blob (``Range`` honoured)
``DELETE /v2/<name>/blobs/<digest>``              delete a blob (registries with ``delete_blob``)
``POST /v2/<name>/blobs/uploads/``                start an upload; monolithic with
                                                  ``?digest=``; mount with ``?mount=&from=``
``GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>``  status, chunk, finish, cancel
``GET /v2/<name>/tags/list``                      tags, paged with ``n``/``last`` and ``Link``
``GET /v2/<name>/referrers/<digest>``             referrers (registries with ``referrers``)
``GET /v2/_catalog``                              repositories, paged the same way
``GET /healthz``, ``/readyz``, ``/metrics``       liveness, readiness, Prometheus metrics
================================================  =====================================

The rooms: ``_routing`` (paths to endpoints), ``_manifests``, ``_blobs``
(and ranges), ``_blob_uploads`` with ``_uploads`` (the sessions), ``_listing``,
``_referrers``, ``_admin``, ``_auth``, ``_ops`` (health, metrics, access log),
``_errors`` (the one place errors become responses) and ``_http`` (the
request/response layer).

Loggers: ``dockerconnect.asgi`` (errors, start-up, administration) and
``dockerconnect.asgi.access`` (one INFO line per request).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from dockerconnect import Digest, Registry
from dockerconnect.asgi._app import RegistryApp
from dockerconnect.asgi._auth import (
    Action,
    Authenticator,
    Authorizer,
    HtpasswdAuthenticator,
    Identity,
    Rule,
    RuleAuthorizer,
    TokenAuthenticator,
)
from dockerconnect.asgi._context import MAX_MANIFEST_SIZE
from dockerconnect.asgi._errors import (
    AccessDenied,
    AuthenticationRequired,
    ManifestTooLarge,
    MethodNotAllowed,
    RouteUnknown,
    TooManySessions,
)
from dockerconnect.asgi._uploads import CHUNK_SIZE, UPLOAD_TTL, UploadSessions

if TYPE_CHECKING:
    from dockerconnect.asgi._stats_metrics import stats_metrics

__all__ = [
    "CHUNK_SIZE",
    "MAX_MANIFEST_SIZE",
    "UPLOAD_TTL",
    "AccessDenied",
    "Action",
    "AuthenticationRequired",
    "Authenticator",
    "Authorizer",
    "HtpasswdAuthenticator",
    "Identity",
    "ManifestTooLarge",
    "MethodNotAllowed",
    "RegistryApp",
    "RouteUnknown",
    "Rule",
    "RuleAuthorizer",
    "TokenAuthenticator",
    "TooManySessions",
    "UploadSessions",
    "create_app",
    "stats_metrics",
]


def __getattr__(name: str) -> Any:
    """``stats_metrics``, imported on first use (PEP 562): it needs
    ``prometheus_client``, which a server imports only when scraped."""
    if name == "stats_metrics":
        from dockerconnect.asgi._stats_metrics import stats_metrics

        globals()[name] = stats_metrics
        return stats_metrics
    raise AttributeError(f"module 'dockerconnect.asgi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "stats_metrics"})


def create_app(
    registry: Registry,
    *,
    upload_dir: str | os.PathLike[str] | None = None,
    blob_path: Callable[[Digest], str | os.PathLike[str]] | None = None,
    admin: bool = False,
    open_registry: bool = True,
    resources: Sequence[AbstractAsyncContextManager[Any]] = (),
    authenticator: Authenticator | None = None,
    authorizer: Authorizer | None = None,
    max_sessions: int = 1000,
    max_sessions_per_repository: int = 100,
    upload_ttl: float = UPLOAD_TTL,
    max_manifest_size: int = MAX_MANIFEST_SIZE,
    startup: Callable[[], Any] | None = None,
) -> RegistryApp:
    """An ASGI 3.0 application serving ``registry`` over the distribution API.

    - ``upload_dir``: where upload sessions live. Give a directory in the
      store and sessions survive restarts and are shared by every server on
      it (only dead sessions, untouched for ``upload_ttl`` seconds and not
      locked, are removed). Default: a new temporary directory, removed at
      shutdown.
    - ``max_sessions`` / ``max_sessions_per_repository``: open upload
      sessions past these caps get 429 ``TOOMANYREQUESTS``.
    - ``blob_path``: where this registry's own blob of a digest lives on
      disk; with it, servers offering ``http.response.pathsend`` send those
      files themselves.
    - ``admin``: add the non-standard ``/_dockerconnect/`` endpoints.
    - ``authenticator`` / ``authorizer``: access control (see
      :mod:`dockerconnect.asgi._auth`); without an authenticator every
      request is allowed. The default authorizer allows anonymous pull and
      authenticated push and delete.
    - ``open_registry``: when the registry is an async context manager (a
      ``Resolver``), the ASGI lifespan opens it at startup and closes it at
      shutdown. Without a lifespan (as under ``httpx.ASGITransport``), open
      it yourself.
    - ``resources``: more async context managers the lifespan opens before
      the registry and closes after it (such as connectors' HTTP clients).
    - ``startup``: an async callable run once everything is open (the
      command line checks every connector there).
    """
    return RegistryApp(
        registry,
        upload_dir=upload_dir,
        blob_path=blob_path,
        admin=admin,
        open_registry=open_registry,
        resources=resources,
        authenticator=authenticator,
        authorizer=authorizer,
        max_sessions=max_sessions,
        max_sessions_per_repository=max_sessions_per_repository,
        upload_ttl=upload_ttl,
        max_manifest_size=max_manifest_size,
        startup=startup,
    )
