"""Manifests over HTTP: ``GET`` and ``HEAD /v2/<name>/manifests/<reference>``.

Every manifest is verified: against the digest it was asked by, and against
the ``Docker-Content-Digest`` the upstream sends with it. Its size is capped
(``MAX_MANIFEST_SIZE``) and its body must arrive within the deadline.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import httpx

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    Manifest,
    base_media_type,
)
from dockerconnect._verify import hashes_to
from dockerconnect.errors import DigestMismatch, ManifestInvalid
from dockerconnect.http._blobs import parse_length
from dockerconnect.http._client import Client
from dockerconnect.http._errors import Where

__all__ = ["ManifestTarget", "Manifests"]


@attrs.frozen(slots=True)
class ManifestTarget:
    """One manifest of one repository, by tag (``digest`` is ``None``) or digest."""

    url: str
    scope: str
    repository: str
    digest: Digest | None


class Manifests:
    """Fetches and checks manifests through one :class:`Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._failures = client.failures

    async def get(self, target: ManifestTarget, accept: Sequence[str]) -> Manifest | None:
        """The manifest, verified; ``None`` if not there."""
        client, repository, digest = self._client, target.repository, target.digest
        headers = {"Accept": ", ".join(accept)}
        response = await client.send(
            "GET", target.url, scope=target.scope, headers=headers, **_where(target)
        )
        try:
            if await client.absent(response):
                return None
            if response.status_code != 200:
                await client.fail(response, repository, digest)
            data = await self._read(response, target)
        finally:
            await response.aclose()
        header = self._failures.digest_header(response, repository, digest)
        if header is not None and header.verifiable and not hashes_to(data, header):
            raise self._mismatch(
                target, f"manifest bytes do not match the Docker-Content-Digest {header}"
            )
        if digest is not None and not hashes_to(data, digest):
            raise self._mismatch(target, "manifest bytes do not match the digest asked by")
        content_type = base_media_type(response.headers.get("content-type", ""))
        media_type = content_type if content_type in MANIFEST_MEDIA_TYPES else None
        try:
            return Manifest.parse(data, media_type)
        except (ManifestInvalid, RecursionError) as exc:
            # Manifest.parse bounds nesting itself; RecursionError stays here so
            # that no parser recursion can ever leave the connector untyped.
            reason = exc.message if isinstance(exc, ManifestInvalid) else "nested too deeply"
            raise self._failures.error(
                f"upstream sent an invalid manifest: {reason}", **_where(target)
            ) from exc

    async def head(self, target: ManifestTarget) -> Descriptor | None:
        """The manifest's descriptor from ``HEAD``; a GET when headers are missing.

        Uses ``Docker-Content-Digest``, ``Content-Type`` and ``Content-Length``;
        the spec only says an upstream "SHOULD" send the digest.
        """
        client, repository, digest = self._client, target.repository, target.digest
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        response = await client.send(
            "HEAD", target.url, scope=target.scope, headers=headers, **_where(target)
        )
        await response.aclose()
        if await client.absent(response):
            return None
        if response.status_code != 200:
            await client.fail(response, repository, digest)
        header = self._failures.digest_header(response, repository, digest)
        if digest is not None and header is not None and header != digest:
            raise self._mismatch(
                target, f"upstream says the manifest asked by digest has digest {header}"
            )
        media_type = base_media_type(response.headers.get("content-type", ""))
        length = parse_length(response.headers.get("content-length"))
        found = digest or header
        if found is None or length is None or media_type not in MANIFEST_MEDIA_TYPES:
            manifest = await self.get(target, MANIFEST_MEDIA_TYPES)
            return None if manifest is None else manifest.descriptor()
        return Descriptor(media_type, found, length)

    async def _read(self, response: httpx.Response, target: ManifestTarget) -> bytes:
        cap = MAX_MANIFEST_SIZE
        length = parse_length(response.headers.get("content-length"))
        if length is not None and length > cap:
            raise self._failures.error(
                f"upstream manifest is {length} bytes, over the {cap} byte limit",
                **_where(target),
            )
        data = await self._client.read(response, cap + 1, **_where(target))
        if len(data) > cap:
            raise self._failures.error(
                f"upstream manifest is over the {cap} byte limit", **_where(target)
            )
        return data

    def _mismatch(self, target: ManifestTarget, message: str) -> DigestMismatch:
        error = self._failures.error(
            message, cls=DigestMismatch, repository=target.repository, digest=target.digest
        )
        assert isinstance(error, DigestMismatch)
        return error


def _where(target: ManifestTarget) -> Where:
    return Where(repository=target.repository, digest=target.digest)
