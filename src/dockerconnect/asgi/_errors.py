"""Errors the server adds, and the one place any error becomes a response.

Every library error already knows its OCI code and HTTP status
(``err.code``, ``err.status``, ``err.to_oci()``); :func:`answer_for` adds the
server's two exceptions to that rule:

- an upstream's ``401``/``403`` (``Unauthorized``/``Denied`` from a
  connector) is the *server's* credentials failing, so the client gets a
  ``502`` saying so, not a ``401`` that would make it doubt its own login;
- a ``StorageError`` from a full disk is ``507 Insufficient Storage``.

The server's own tree, beside the library's::

    DockerConnectError
    ├── NotFound ── RouteUnknown            UNKNOWN           404
    ├── Unsupported ── MethodNotAllowed     UNSUPPORTED       405
    ├── ManifestInvalid ── ManifestTooLarge MANIFEST_INVALID  413
    ├── AuthenticationRequired              UNAUTHORIZED      401
    ├── AccessDenied                        DENIED            403
    └── TooManySessions                     TOOMANYREQUESTS   429
"""

from __future__ import annotations

import errno
from typing import Any

from dockerconnect.errors import (
    Denied,
    DockerConnectError,
    ManifestInvalid,
    NotFound,
    StorageError,
    Unauthorized,
    Unsupported,
    UpstreamError,
)

__all__ = [
    "AccessDenied",
    "AuthenticationRequired",
    "ClientGone",
    "Failed",
    "ManifestTooLarge",
    "MethodNotAllowed",
    "RouteUnknown",
    "TooManySessions",
    "answer_for",
    "error_body",
]

_FULL = (errno.ENOSPC, errno.EDQUOT)


class MethodNotAllowed(Unsupported):
    """A method the endpoint does not implement (distribution answers 405 ``UNSUPPORTED``)."""

    status = 405


class ManifestTooLarge(ManifestInvalid):
    """A manifest PUT larger than the server accepts (HTTP 413)."""

    status = 413


class RouteUnknown(NotFound):
    """A path that names no endpoint of this server."""


class AuthenticationRequired(DockerConnectError):
    """The request needs credentials, or the ones it sent are not valid here."""

    code = "UNAUTHORIZED"
    status = 401


class AccessDenied(DockerConnectError):
    """The client is known, and not allowed to do this to this repository."""

    code = "DENIED"
    status = 403


class TooManySessions(DockerConnectError):
    """Too many upload sessions are open (in one repository or in total)."""

    code = "TOOMANYREQUESTS"
    status = 429
    retryable = True


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class Failed(Exception):
    """A registry error to answer with extra headers (``Range``, ``Content-Range``)."""

    def __init__(
        self, error: DockerConnectError, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.headers = list(headers or [])


def error_body(entry: dict[str, Any]) -> dict[str, Any]:
    return {"errors": [entry]}


def answer_for(error: DockerConnectError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OCI error entry a client gets for ``error``."""
    if isinstance(error, Unauthorized | Denied) and isinstance(error, UpstreamError):
        where = f"upstream {error.connector!r}" if error.connector else "an upstream registry"
        message = (
            f"{where} refused this server's credentials for it (HTTP {error.status}): "
            "the server's connector credentials need fixing, not your login"
        )
        return 502, {"code": "UNKNOWN", "message": message, "detail": {"upstream": error.message}}
    if isinstance(error, StorageError):
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.errno in _FULL:
            return 507, {"code": "UNKNOWN", "message": f"the server's storage is full: {error}"}
        return error.status, {"code": error.code, "message": str(error)}
    return error.status, error.to_oci()
