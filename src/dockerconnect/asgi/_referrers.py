"""``GET /v2/<name>/referrers/<digest>`` (distribution-spec 1.1, "Listing Referrers").

Answered from ``registry.referrers(repository, digest, artifact_type=...)``
as an OCI image index; with ``?artifactType=`` the registry filters and the
answer says so in ``OCI-Filters-Applied: artifactType``. No referrers is an
empty index, never a 404. A registry without ``referrers`` answers 404, so
that clients fall back to the tag schema (``<alg>-<hex>`` tags) as the spec
tells them to.
"""

from __future__ import annotations

import json

from dockerconnect import OCI_INDEX, Descriptor, Digest
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._errors import RouteUnknown
from dockerconnect.asgi._http import Request, Response
from dockerconnect.asgi._routing import not_allowed

__all__ = ["referrers"]


async def referrers(
    ctx: Context, request: Request, response: Response, name: str, ref: str
) -> None:
    if request.method not in ("GET", "HEAD"):
        not_allowed(request.method, ["GET", "HEAD"])
    digest = Digest.parse(ref)
    query = getattr(ctx.registry, "referrers", None)
    if query is None:
        raise RouteUnknown("this registry has no referrers API; use the tag schema")
    artifact_type = request.param("artifactType") or None
    found: list[Descriptor] = await query(name, digest, artifact_type=artifact_type)
    if artifact_type is not None:
        # Filter here too, so the header is true whatever the registry did.
        found = [d for d in found if d.artifact_type == artifact_type]
    index: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_dict() for d in found],
    }
    headers = [(b"content-type", OCI_INDEX.encode())]
    if artifact_type:
        headers.append((b"oci-filters-applied", b"artifactType"))
    await response.simple(200, headers, json.dumps(index).encode())
