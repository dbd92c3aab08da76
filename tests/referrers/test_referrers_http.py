"""Referrers over HTTP: the server's endpoint, and HttpConnector with and without
an upstream referrers API (the tag-schema fallback). Every request that
reached the upstream app is recorded. On asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _referrer_helpers import SBOM, SIG, WithoutReferrers, artifact, schema_tag, tag_schema_index

from dockerconnect import MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.asgi import create_app
from dockerconnect.http import HttpConnector
from dockerconnect.testing import RandomImage, random_image

pytestmark = pytest.mark.anyio


class Recording(httpx.AsyncBaseTransport):
    """An ASGI transport that records each request's method and path."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return await self._inner.handle_async_request(request)

    def to(self, part: str) -> int:
        return sum(1 for _, path in self.requests if part in path)


def memory(name: str, *connectors: Any) -> Resolver:
    return Resolver(
        name, manifests=MemoryManifestStore(), blobs=MemoryBlobStore(), connectors=connectors
    )


async def push(r: Resolver, image: RandomImage, tag: str | None = None) -> None:
    for digest, data in image.blobs.items():
        await r.push_blob("app", data, digest=digest)
    m = image.manifest
    await r.push_manifest("app", m.data, media_type=m.media_type, tag=tag)


@asynccontextmanager
async def upstream_app(registry: Any, tmp_path: Path) -> AsyncIterator[Recording]:
    yield Recording(create_app(registry, upload_dir=tmp_path / "uploads"))


async def test_the_server_filters_and_says_so(tmp_path: Path) -> None:
    image = random_image(seed=60)
    sbom, sig = artifact(image.manifest, SBOM, seed=61), artifact(image.manifest, SIG, seed=62)
    async with memory("up") as inner, upstream_app(inner, tmp_path) as transport:
        await push(inner, sbom)
        await push(inner, sig)
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            r = await client.get(f"/v2/app/referrers/{image.manifest.digest}")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
            assert "oci-filters-applied" not in r.headers
            listed = r.json()["manifests"]
            assert {m["digest"] for m in listed} == {
                str(sbom.manifest.digest),
                str(sig.manifest.digest),
            }
            assert {m["artifactType"] for m in listed} == {SBOM, SIG}
            r = await client.get(
                f"/v2/app/referrers/{image.manifest.digest}", params={"artifactType": SIG}
            )
            assert r.headers["oci-filters-applied"] == "artifactType"
            assert r.json()["manifests"] == [sig.manifest.referrer().to_dict()]
            # An unknown subject: an empty index, never a 404.
            r = await client.get(f"/v2/app/referrers/{random_image(seed=63).manifest.digest}")
            assert r.status_code == 200
            assert r.json()["manifests"] == []
            r = await client.head(f"/v2/app/referrers/{image.manifest.digest}")
            assert r.status_code == 200 and r.content == b""


async def test_http_connector_uses_the_upstream_referrers_api(tmp_path: Path) -> None:
    image = random_image(seed=64)
    sbom = artifact(image.manifest, SBOM, seed=65)
    async with memory("up") as inner, upstream_app(inner, tmp_path) as transport:
        await push(inner, sbom)
        connector = HttpConnector("http://up", name="up", transport=transport)
        async with connector, memory("edge", connector) as edge:
            assert await edge.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
            assert await edge.referrers("app", image.manifest.digest, artifact_type=SIG) == []
    assert transport.to("/referrers/") == 1
    assert transport.to("/manifests/") == 0


async def test_http_connector_falls_back_to_the_tag_schema(tmp_path: Path) -> None:
    image = random_image(seed=66)
    sbom = artifact(image.manifest, SBOM, seed=67)
    index = tag_schema_index(sbom.manifest)
    async with memory("up") as inner:
        await push(inner, sbom)
        await inner.push_manifest(
            "app", index.data, media_type=index.media_type, tag=schema_tag(image.manifest.digest)
        )
        async with upstream_app(WithoutReferrers(inner), tmp_path) as transport:
            connector = HttpConnector("http://up", name="up", transport=transport)
            async with connector, memory("edge", connector) as edge:
                assert await connector.referrers("app", image.manifest.digest) is None
                assert await edge.referrers("app", image.manifest.digest) == [
                    sbom.manifest.referrer()
                ]
                # A subject with no tag-schema index: no referrers, not an error.
                other = random_image(seed=68).manifest.digest
                assert await edge.referrers("app", other) == []
    # The first direct call, then one API attempt and one tag GET per subject.
    assert transport.to("/referrers/") == 3
    assert [p for m, p in transport.requests if "/manifests/" in p] == [
        f"/v2/app/manifests/{schema_tag(image.manifest.digest)}",
        f"/v2/app/manifests/{schema_tag(other)}",
    ]


async def test_a_push_with_a_subject_is_answered_with_oci_subject(tmp_path: Path) -> None:
    image = random_image(seed=69)
    sbom = artifact(image.manifest, SBOM, seed=70)
    async with memory("up") as inner, upstream_app(inner, tmp_path) as transport:
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            for digest, data in sbom.blobs.items():
                await client.post(f"/v2/app/blobs/uploads/?digest={digest}", content=data)
            r = await client.put(
                f"/v2/app/manifests/{sbom.manifest.digest}",
                content=sbom.manifest.data,
                headers={"content-type": sbom.manifest.media_type},
            )
            assert r.status_code == 201, r.text
            assert r.headers["oci-subject"] == str(image.manifest.digest)
        # Visible as a referrer at once, though the subject was never pushed.
        assert await inner.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
