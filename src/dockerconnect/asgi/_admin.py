"""The non-standard operator endpoints under ``/_dockerconnect/`` (off by default).

``GET check/<name>/<ref>`` (the registry's ``check()`` as JSON; with
``?referrers=true`` its referrers too, for a registry whose ``check`` takes
``referrers=``),
``GET connectors`` and ``POST connectors/remove?name=N`` (for a registry with
a ``connectors`` list, such as a ``Resolver``), and ``GET stats``. With an
authenticator configured they need the ``admin`` action on repository ``*``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from dockerconnect import Descriptor, IntegrityReport
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._errors import RouteUnknown
from dockerconnect.asgi._http import Request, Response
from dockerconnect.errors import NotFound, Unsupported

__all__ = ["admin"]

log = logging.getLogger("dockerconnect.asgi")


def _report_json(report: IntegrityReport) -> dict[str, Any]:
    def descriptor(d: Descriptor) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size}
        if d.artifact_type is not None:
            out["artifactType"] = d.artifact_type
        return out

    return {
        "repository": report.repository,
        "manifest": descriptor(report.manifest),
        "ok": report.ok,
        "entries": [{**descriptor(e.descriptor), "location": e.location} for e in report.entries],
        "missing": [str(d.digest) for d in report.missing],
    }


def _connectors(ctx: Context) -> list[Any]:
    connectors = getattr(ctx.registry, "connectors", None)
    if not isinstance(connectors, list):
        raise Unsupported("this registry has no list of connectors")
    return connectors


async def admin(ctx: Context, request: Request, response: Response, rest: str) -> None:
    if rest.startswith("check/") and request.method == "GET":
        parts = rest[len("check/") :].split("/")
        if len(parts) < 2 or not parts[-1]:
            raise RouteUnknown("use /_dockerconnect/check/<name>/<reference>")
        name, reference = "/".join(parts[:-1]), parts[-1]
        if request.param("referrers") in ("1", "true"):
            check: Any = ctx.registry.check
            if "referrers" not in inspect.signature(check).parameters:
                raise Unsupported("this registry's check() cannot include referrers")
            report = await check(name, reference, referrers=True)
        else:
            report = await ctx.registry.check(name, reference)
        await response.json(200, _report_json(report))
    elif rest == "connectors" and request.method == "GET":
        await response.json(200, {"connectors": [c.name for c in _connectors(ctx)]})
    elif rest == "connectors/remove" and request.method == "POST":
        await _remove_connector(ctx, request, response)
    elif rest == "stats" and request.method == "GET":
        stats = getattr(ctx.registry, "stats", None)
        if stats is None or not hasattr(stats, "as_dict"):
            raise Unsupported("this registry keeps no stats")
        await response.json(200, stats.as_dict())
    else:
        raise RouteUnknown(f"no administrative endpoint {request.method} /_dockerconnect/{rest}")


async def _remove_connector(ctx: Context, request: Request, response: Response) -> None:
    """Remove a connector by name; the registry's next request no longer asks it."""
    name = request.param("name")
    connectors = _connectors(ctx)
    for index, connector in enumerate(connectors):
        if connector.name == name:
            del connectors[index]
            log.warning("connector %r removed by an administrator", name)
            names = [c.name for c in connectors]
            await response.json(200, {"removed": name, "connectors": names})
            return
    raise NotFound(f"no connector named {name!r}")
