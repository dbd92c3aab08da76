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


def route(path: str) -> Route:
    """The endpoint ``path`` names; ``RouteUnknown`` or ``NameInvalid`` otherwise."""
    if path == "/v2":
        path = "/v2/"
    rest = path[len("/v2/") :]
    if rest == "":
        return Route("base")
    if rest == "_catalog":
        return Route("catalog")
    parts = rest.split("/")
    n = len(parts)
    if n >= 3 and parts[-2:] == ["tags", "list"]:
        return Route("tags", _name(parts, 2))
    if n >= 4 and parts[-3:] == ["blobs", "uploads", ""]:
        return Route("uploads", _name(parts, 3))
    if n >= 3 and parts[-2:] == ["blobs", "uploads"]:
        return Route("uploads", _name(parts, 2))
    if n >= 4 and parts[-3:-1] == ["blobs", "uploads"] and ":" not in parts[-1]:
        return Route("upload", _name(parts, 3), parts[-1])
    if n >= 3 and parts[-2] == "blobs" and parts[-1]:
        return Route("blob", _name(parts, 2), parts[-1])
    if n >= 3 and parts[-2] == "manifests" and parts[-1]:
        return Route("manifest", _name(parts, 2), parts[-1])
    if n >= 3 and parts[-2] == "referrers" and parts[-1]:
        return Route("referrers", _name(parts, 2), parts[-1])
    raise RouteUnknown(f"no endpoint at {path}")


def not_allowed(method: str, allowed: Iterable[str]) -> NoReturn:
    raise MethodNotAllowed(f"{method} is not allowed here; use {', '.join(allowed)}")
