"""From a ``/v2/...`` path to an endpoint, a repository and an argument.

Repository names contain slashes, so the path is read from the right: the
last components name the endpoint, and everything before them is the name
(distribution-spec "Endpoints").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NoReturn

import attrs

from dockerconnect import validate_repository
from dockerconnect.asgi._errors import MethodNotAllowed, RouteUnknown

__all__ = ["Endpoint", "Route", "not_allowed", "route"]

Endpoint = Literal["base", "catalog", "tags", "manifest", "blob", "uploads", "upload", "referrers"]


@attrs.frozen
class Route:
    endpoint: Endpoint
    repository: str = ""
    argument: str = ""


def _name(parts: list[str], suffix_length: int) -> str:
    return validate_repository("/".join(parts[:-suffix_length]))


#: Each endpoint by the path components it ends with, tried in order; ``None``
#: stands for the argument (a digest, reference or session id), which is never
#: empty. The ``blobs/uploads/`` forms come before ``blobs/<digest>``.
_SUFFIXES: tuple[tuple[tuple[str | None, ...], Endpoint], ...] = (
    (("tags", "list"), "tags"),
    (("blobs", "uploads", ""), "uploads"),
    (("blobs", "uploads"), "uploads"),
    (("blobs", "uploads", None), "upload"),
    (("blobs", None), "blob"),
    (("manifests", None), "manifest"),
    (("referrers", None), "referrers"),
)


def route(path: str) -> Route:
    """The endpoint ``path`` names; ``RouteUnknown`` or ``NameInvalid`` otherwise."""
    rest = "" if path == "/v2" else path[len("/v2/") :]
    parts = rest.split("/")
    if len(parts) > 2 and parts[-1]:
        # The two routes of every pull, matched without the table (a test
        # holds this to the table's answer): ".../manifests/<reference>" and
        # ".../blobs/<digest>", where ".../blobs/uploads" is the uploads route.
        kind = parts[-2]
        if kind == "manifests":
            return Route("manifest", _name(parts, 2), parts[-1])
        if kind == "blobs" and parts[-1] != "uploads":
            return Route("blob", _name(parts, 2), parts[-1])
    return table_route(path)


def table_route(path: str) -> Route:
    """:func:`route` by the table alone."""
    rest = "" if path == "/v2" else path[len("/v2/") :]
    if rest == "":
        return Route("base")
    if rest == "_catalog":
        return Route("catalog")
    parts = rest.split("/")
    for suffix, endpoint in _SUFFIXES:
        argument = _ends_with(parts, suffix)
        if argument is None or (endpoint == "upload" and ":" in argument):
            continue  # a session id never holds ":"; a digest always does
        return Route(endpoint, _name(parts, len(suffix)), argument)
    raise RouteUnknown(f"no endpoint at {path}")


def _ends_with(parts: list[str], suffix: tuple[str | None, ...]) -> str | None:
    """The argument if ``parts`` are a name followed by ``suffix`` (``""`` when
    the suffix takes none), else ``None``."""
    if len(parts) <= len(suffix):
        return None
    argument = ""
    for want, got in zip(suffix, parts[-len(suffix) :], strict=True):
        if want is None and got:
            argument = got
        elif want != got:
            return None
    return argument


def not_allowed(method: str, allowed: Iterable[str]) -> NoReturn:
    raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(allowed)}")
