"""Referrers over HTTP: ``GET /v2/<name>/referrers/<digest>`` (distribution-spec 1.1).

distribution-spec "Listing Referrers": a registry that supports the API
answers 200 with an OCI image index whose ``manifests`` are the referrers'
descriptors (with ``artifactType`` and ``annotations``), even when there are
none; it "MUST NOT return a 404". So a 404 that is not an OCI index means the
upstream has no referrers API: ``None``, and the caller falls back to the tag
schema. ``?artifactType=`` asks the registry to filter; since it may not
(``OCI-Filters-Applied`` says when it did), the answer is filtered here too.
Pages are followed through ``Link: <…>; rel="next"``, within the listing
bounds.
"""

from __future__ import annotations

import httpx

from dockerconnect._descriptor import Descriptor
from dockerconnect._json import load_json
from dockerconnect._manifest import MAX_MANIFEST_SIZE, OCI_INDEX, base_media_type
from dockerconnect.errors import ListingTooLarge, ManifestInvalid
from dockerconnect.http._blobs import DigestTarget, where
from dockerconnect.http._client import Client
from dockerconnect.http._listing import ListingBounds

__all__ = ["Referrers"]

_HTML = frozenset({"text/html", "application/xhtml+xml"})


class Referrers:
    """Lists referrers through one :class:`Client`."""

    def __init__(
        self, client: Client, origin: tuple[str, str, int | None], bounds: ListingBounds
    ) -> None:
        self._client = client
        self._origin = origin
        self._bounds = bounds

    async def fetch(
        self, target: DigestTarget, artifact_type: str | None
    ) -> list[Descriptor] | None:
        """Every referrer of the subject (of ``artifact_type``, if given);
        ``None`` if the upstream has no referrers API."""
        found: list[Descriptor] = []
        url: str | None = target.url
        if artifact_type is not None:
            url = str(httpx.URL(target.url).copy_merge_params({"artifactType": artifact_type}))
        pages = 0
        while url is not None:
            pages += 1
            if pages > self._bounds.max_pages:
                raise self._client.failures.error(
                    f"upstream's referrers listing has more than {self._bounds.max_pages} pages",
                    cls=ListingTooLarge,
                    **where(target),
                )
            page = await self._page(url, target, first=pages == 1)
            if page is None:
                return None
            descriptors, url = page
            found.extend(descriptors)
            if len(found) > self._bounds.max_names:
                raise self._client.failures.error(
                    f"upstream lists more than {self._bounds.max_names} referrers",
                    cls=ListingTooLarge,
                    **where(target),
                )
        if artifact_type is not None:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    async def _page(
        self, url: str, target: DigestTarget, *, first: bool
    ) -> tuple[list[Descriptor], str | None] | None:
        client = self._client
        response = await client.send(
            "GET", url, scope=target.scope, headers={"Accept": OCI_INDEX}, **where(target)
        )
        try:
            status = response.status_code
            if base_media_type(response.headers.get("content-type", "")) in _HTML:
                raise client.failures.error(
                    f"upstream answered {status} with an HTML page instead of referrers",
                    **where(target),
                )
            if status not in (200, 404):
                codes = {c for c, _ in await client.oci_errors(response)}
                if first and (status in (405, 501) or "UNSUPPORTED" in codes):
                    return None
                await client.fail(response, target.repository, target.digest)
            raw = await client.read(response, MAX_MANIFEST_SIZE + 1, **where(target))
        finally:
            await response.aclose()
        if len(raw) > MAX_MANIFEST_SIZE:
            raise client.failures.error(
                f"upstream's referrers index is over {MAX_MANIFEST_SIZE} bytes", **where(target)
            )
        index = _index(raw)
        if index is None:
            if status == 404 and first:
                return None  # no referrers API here
            raise client.failures.error(
                f"upstream answered referrers {status} with something other than an OCI index",
                **where(target),
            )
        next_url = self._next(response, target)
        return self._descriptors(index, target), next_url

    def _descriptors(self, entries: list[object], target: DigestTarget) -> list[Descriptor]:
        try:
            return [Descriptor.from_dict(entry) for entry in entries]
        except ManifestInvalid as exc:
            raise self._client.failures.error(
                f"upstream's referrers index holds an invalid descriptor: {exc.message}",
                **where(target),
            ) from exc

    def _next(self, response: httpx.Response, target: DigestTarget) -> str | None:
        link = self._client.link(response, "next", repository=target.repository)
        if link is None:
            return None
        if (link.scheme, link.host, link.port) != self._origin:
            raise self._client.failures.error(
                "upstream's next referrers page is on another host", **where(target)
            )
        return str(link)


def _index(raw: bytes) -> list[object] | None:
    """The ``manifests`` of an OCI image index, or ``None`` if ``raw`` is none."""
    try:
        doc = load_json(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    media_type = doc.get("mediaType")
    manifests = doc.get("manifests")
    if media_type not in (None, OCI_INDEX) or not isinstance(manifests, list):
        return None
    return manifests
