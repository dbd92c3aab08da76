"""``dockerconnect.asgi``, served in-process.

Every endpoint is driven through ``httpx.ASGITransport`` over a ``Resolver``
with memory stores and a counting ``FakeUpstream``; a few tests call the ASGI
application directly to see the messages it sends (chunk sizes, pathsend,
lifespan).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

import dockerconnect.asgi as server
from dockerconnect import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    Resolver,
)
from dockerconnect._cli import build_resolver, parse_serve
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    RandomImage,
    random_blob,
    random_image,
    random_index,
)

pytestmark = pytest.mark.anyio


@attrs.define
class Env:
    client: httpx.AsyncClient
    resolver: Resolver
    upstream: FakeUpstream
    counted: CountingConnector
    app: Any
    upload_dir: Path


@asynccontextmanager
async def serve(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Env]:
    """A Resolver (memory stores, one counted FakeUpstream "hub") behind the app."""
    upstream = FakeUpstream("hub")
    counted = CountingConnector(upstream)
    resolver = Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=[counted],
    )
    upload_dir = tmp_path / "uploads"
    app = server.create_app(resolver, upload_dir=upload_dir, admin=True, **kwargs)
    async with resolver:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            yield Env(client, resolver, upstream, counted, app, upload_dir)


async def leftovers(directory: Path) -> list[str]:
    """The files left in ``directory`` (sessions sit one level down, per repository)."""
    return [p.name async for p in anyio.Path(directory).rglob("*") if await p.is_file()]


def oci_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is an OCI error body with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert [e["code"] for e in body["errors"]] == [code], body
    assert isinstance(body["errors"][0]["message"], str)
    return body["errors"][0]  # type: ignore[no-any-return]


async def push_blobs(client: httpx.AsyncClient, name: str, image: RandomImage) -> None:
    for digest, data in image.blobs.items():
        r = await client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", content=data)
        assert r.status_code == 201, r.text


# -- base and routing ----------------------------------------------------------------


async def test_base_endpoint(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        r = await env.client.get("/v2/")
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        assert r.json() == {}
        assert (await env.client.get("/v2")).status_code == 200
        head = await env.client.head("/v2/")
        assert head.status_code == 200 and head.content == b""


async def test_unknown_route_and_method(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        oci_error(await env.client.get("/v1/whatever"), 404, "UNKNOWN")
        oci_error(await env.client.get("/v2/app/nothing/here"), 404, "UNKNOWN")
        oci_error(await env.client.post("/v2/app/manifests/latest"), 405, "UNSUPPORTED")
        oci_error(await env.client.post("/v2/"), 405, "UNSUPPORTED")
        oci_error(await env.client.put("/v2/app/blobs/sha256:" + "0" * 64), 405, "UNSUPPORTED")


async def test_invalid_names_tags_and_digests(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        oci_error(await env.client.get("/v2/UPPER/manifests/latest"), 400, "NAME_INVALID")
        oci_error(await env.client.get("/v2/a//b/tags/list"), 400, "NAME_INVALID")
        # A reference that cannot be a tag is simply not there on GET and HEAD
        # (distribution-spec conformance), and reaches no upstream.
        oci_error(await env.client.get("/v2/app/manifests/bad!tag"), 404, "MANIFEST_UNKNOWN")
        head = await env.client.head("/v2/app/manifests/.INVALID_MANIFEST_NAME")
        assert head.status_code == 404
        oci_error(await env.client.get("/v2/app/manifests/sha256:abc"), 400, "DIGEST_INVALID")
        oci_error(await env.client.get("/v2/app/blobs/sha256:abc"), 400, "DIGEST_INVALID")
        assert env.counted.total == 0


# -- manifests -----------------------------------------------------------------------


async def test_get_and_head_manifest_through_the_connector(tmp_path: Path) -> None:
    image = random_image(seed=1)
    async with serve(tmp_path) as env:
        env.upstream.add("team/app", image, tag="v1")
        for ref in ("v1", str(image.manifest.digest)):
            r = await env.client.get(f"/v2/team/app/manifests/{ref}")
            assert r.status_code == 200
            assert r.content == image.manifest.data
            assert r.headers["docker-content-digest"] == str(image.manifest.digest)
            assert r.headers["content-type"] == OCI_MANIFEST
            assert r.headers["content-length"] == str(len(image.manifest.data))
            head = await env.client.head(f"/v2/team/app/manifests/{ref}")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["docker-content-digest"] == str(image.manifest.digest)
            assert head.headers["content-length"] == str(len(image.manifest.data))
            assert head.headers["content-type"] == OCI_MANIFEST
        # Cached after the first pull: the upstream was asked once.
        assert env.counted.calls["get_manifest"] == 1


async def test_manifest_unknown(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        oci_error(await env.client.get("/v2/app/manifests/latest"), 404, "MANIFEST_UNKNOWN")
        head = await env.client.head("/v2/app/manifests/latest")
        assert head.status_code == 404 and head.content == b""


async def test_accept_negotiation_for_an_index(tmp_path: Path) -> None:
    index = random_index(seed=2, platforms=("linux/arm64/v8", "linux/amd64"))
    amd64 = index.children[1]
    async with serve(tmp_path) as env:
        env.upstream.add("multi", index, tag="v1")
        url = "/v2/multi/manifests/v1"
        both = {"accept": f"{OCI_INDEX}, {OCI_MANIFEST};q=0.5"}
        r = await env.client.get(url, headers=both)
        assert r.headers["content-type"] == OCI_INDEX and r.content == index.manifest.data
        r = await env.client.get(url, headers={"accept": "*/*"})
        assert r.content == index.manifest.data
        # A client that cannot read indexes gets the linux/amd64 image.
        r = await env.client.get(url, headers={"accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.content == amd64.manifest.data
        assert r.headers["docker-content-digest"] == str(amd64.manifest.digest)
        head = await env.client.head(url, headers={"accept": OCI_MANIFEST})
        assert head.headers["docker-content-digest"] == str(amd64.manifest.digest)
        # Nothing in an accepted media type at all.
        r = await env.client.get(url, headers={"accept": DOCKER_MANIFEST})
        oci_error(r, 404, "MANIFEST_UNKNOWN")


async def test_put_manifest_by_tag_and_by_digest(tmp_path: Path) -> None:
    image = random_image(seed=3)
    digest = str(image.manifest.digest)
    async with serve(tmp_path) as env:
        await push_blobs(env.client, "app", image)
        headers = {"content-type": OCI_MANIFEST}
        r = await env.client.put(
            "/v2/app/manifests/v1", content=image.manifest.data, headers=headers
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v2/app/manifests/{digest}"
        assert r.headers["docker-content-digest"] == digest
        r = await env.client.put(
            f"/v2/app/manifests/{digest}", content=image.manifest.data, headers=headers
        )
        assert r.status_code == 201
        r = await env.client.get("/v2/app/manifests/v1")
        assert r.content == image.manifest.data  # exact bytes, never re-serialised
        assert env.counted.total == 0 or env.counted.calls["get_manifest"] == 0


async def test_put_manifest_errors(tmp_path: Path) -> None:
    image = random_image(seed=4)
    other = random_image(seed=5)
    headers = {"content-type": OCI_MANIFEST}
    async with serve(tmp_path) as env:
        # Its blobs resolve nowhere.
        r = await env.client.put(
            "/v2/app/manifests/v1", content=image.manifest.data, headers=headers
        )
        error = oci_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
        assert {d["digest"] for d in error["detail"]} == {str(d) for d in image.blobs}
        await push_blobs(env.client, "app", image)
        # Pushed under another manifest's digest.
        r = await env.client.put(
            f"/v2/app/manifests/{other.manifest.digest}",
            content=image.manifest.data,
            headers=headers,
        )
        oci_error(r, 400, "DIGEST_INVALID")
        # Not a manifest; a media type that differs from the document's own.
        r = await env.client.put("/v2/app/manifests/v1", content=b"{nope", headers=headers)
        oci_error(r, 400, "MANIFEST_INVALID")
        r = await env.client.put(
            "/v2/app/manifests/v1",
            content=image.manifest.data,
            headers={"content-type": DOCKER_MANIFEST},
        )
        oci_error(r, 400, "MANIFEST_INVALID")
        # Larger than 4 MiB: refused, declared or not.
        huge = b" " * (server.MAX_MANIFEST_SIZE + 1)
        r = await env.client.put("/v2/app/manifests/v1", content=huge, headers=headers)
        oci_error(r, 413, "MANIFEST_INVALID")
        # Undeclared: reading stops once past the limit.
        chunks = [b" " * (1024 * 1024)] * 64
        messages, read = await call(
            env.app,
            "PUT",
            "/v2/app/manifests/v1",
            headers=[(b"content-type", OCI_MANIFEST.encode())],
            body=chunks,
        )
        assert messages[0]["status"] == 413
        assert read <= 5
        oci_error(await env.client.get("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_put_manifest_without_content_type_uses_the_documents_own(tmp_path: Path) -> None:
    image = random_image(seed=6)
    async with serve(tmp_path) as env:
        await push_blobs(env.client, "app", image)
        r = await env.client.put("/v2/app/manifests/v1", content=image.manifest.data)
        assert r.status_code == 201
        r = await env.client.get("/v2/app/manifests/v1")
        assert r.headers["content-type"] == OCI_MANIFEST


async def test_delete_manifest(tmp_path: Path) -> None:
    image = random_image(seed=7)
    digest = str(image.manifest.digest)
    async with serve(tmp_path) as env:
        await push_blobs(env.client, "app", image)
        for tag in ("v1", "v2"):
            r = await env.client.put(
                f"/v2/app/manifests/{tag}",
                content=image.manifest.data,
                headers={"content-type": OCI_MANIFEST},
            )
            assert r.status_code == 201
        assert (await env.client.delete("/v2/app/manifests/v1")).status_code == 202
        oci_error(await env.client.get("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")
        assert (await env.client.get("/v2/app/manifests/v2")).status_code == 200
        assert (await env.client.delete(f"/v2/app/manifests/{digest}")).status_code == 202
        oci_error(await env.client.get(f"/v2/app/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")
        oci_error(await env.client.get("/v2/app/manifests/v2"), 404, "MANIFEST_UNKNOWN")
        oci_error(await env.client.delete("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


# -- blobs ---------------------------------------------------------------------------


async def test_get_and_head_blob(tmp_path: Path) -> None:
    data = random_blob(300_000, 8)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        head = await env.client.head(f"/v2/app/blobs/{digest}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["docker-content-digest"] == str(digest)
        r = await env.client.get(f"/v2/app/blobs/{digest}")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["docker-content-digest"] == str(digest)
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["accept-ranges"] == "bytes"
        # Content-addressed: another repository of this registry reads it locally.
        assert (await env.client.get(f"/v2/other/blobs/{digest}")).content == data
        assert env.counted.opened[digest] == 1


async def test_blob_unknown(tmp_path: Path) -> None:
    digest = Digest.from_bytes(b"nobody has me")
    async with serve(tmp_path) as env:
        oci_error(await env.client.get(f"/v2/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        head = await env.client.head(f"/v2/app/blobs/{digest}")
        assert head.status_code == 404


@pytest.mark.parametrize(
    ("header", "status", "first", "last"),
    [
        ("bytes=10-19", 206, 10, 19),
        ("bytes=100-", 206, 100, 999),
        ("bytes=-5", 206, 995, 999),
        ("bytes=990-5000", 206, 990, 999),
        ("bytes=-5000", 206, 0, 999),
        ("bytes=0-0", 206, 0, 0),
        ("bytes=0-1,5-6", 200, 0, 999),  # several ranges: ignored
        ("items=0-1", 200, 0, 999),  # not bytes: ignored
    ],
)
async def test_blob_ranges(tmp_path: Path, header: str, status: int, first: int, last: int) -> None:
    data = random_blob(1000, 9)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        r = await env.client.get(f"/v2/app/blobs/{digest}", headers={"range": header})
        assert r.status_code == status
        assert r.content == data[first : last + 1]
        assert r.headers["content-length"] == str(last - first + 1)
        if status == 206:
            assert r.headers["content-range"] == f"bytes {first}-{last}/1000"
        else:
            assert "content-range" not in r.headers


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=9-2", "bytes=500-0"]
)
async def test_unsatisfiable_range(tmp_path: Path, header: str) -> None:
    data = random_blob(1000, 10)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        r = await env.client.get(f"/v2/app/blobs/{digest}", headers={"range": header})
        oci_error(r, 416, "RANGE_INVALID")
        assert r.headers["content-range"] == "bytes */1000"


async def test_range_of_a_local_blob_after_caching(tmp_path: Path) -> None:
    data = random_blob(2_500_000, 11)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        assert (await env.client.get(f"/v2/app/blobs/{digest}")).content == data
        r = await env.client.get(
            f"/v2/app/blobs/{digest}", headers={"range": "bytes=1048000-2100000"}
        )
        assert r.status_code == 206
        assert r.content == data[1048000:2100001]
        assert env.counted.opened[digest] == 1


# -- uploads -------------------------------------------------------------------------


async def test_chunked_upload(tmp_path: Path) -> None:
    data = random_blob(250_000, 12)
    digest = Digest.from_bytes(data)
    async with serve(tmp_path) as env:
        r = await env.client.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 202
        assert r.headers["range"] == "0-0"
        location = r.headers["location"]
        assert location.startswith("/v2/team/app/blobs/uploads/")
        assert r.headers["docker-upload-uuid"] == location.rsplit("/", 1)[1]
        offset = 0
        for size in (100_000, 100_000):
            chunk = data[offset : offset + size]
            r = await env.client.patch(
                location,
                content=chunk,
                headers={"content-range": f"{offset}-{offset + size - 1}"},
            )
            assert r.status_code == 202, r.text
            offset += size
            assert r.headers["range"] == f"0-{offset - 1}"
            location = r.headers["location"]
        status = await env.client.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{offset - 1}"
        # The final chunk comes with the PUT.
        r = await env.client.put(
            location,
            params={"digest": str(digest)},
            content=data[offset:],
            headers={"content-range": f"{offset}-{len(data) - 1}"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/v2/team/app/blobs/{digest}"
        assert r.headers["docker-content-digest"] == str(digest)
        assert (await env.client.get(f"/v2/team/app/blobs/{digest}")).content == data
        # The session is over and its file gone.
        oci_error(await env.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert await leftovers(env.upload_dir) == []


async def test_streamed_patch_without_content_range(tmp_path: Path) -> None:
    data = random_blob(3_000_000, 13)
    digest = Digest.from_bytes(data)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async with serve(tmp_path) as env:
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.patch(location, content=body())
        assert r.status_code == 202
        assert r.headers["range"] == f"0-{len(data) - 1}"
        r = await env.client.put(location, params={"digest": str(digest)})
        assert r.status_code == 201
        stored = await env.resolver.blobs.stat(digest)
        assert stored is not None and stored.size == len(data)


async def test_out_of_order_chunk_is_416_with_the_current_range(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.patch(location, content=b"abcd", headers={"content-range": "0-3"})
        assert r.status_code == 202
        for bad in ("0-3", "10-13", "4-2", "garbage"):
            r = await env.client.patch(location, content=b"efgh", headers={"content-range": bad})
            oci_error(r, 416, "RANGE_INVALID")
            assert r.headers["range"] == "0-3"
            assert r.headers["location"] == location
        # A final PUT whose chunk does not continue the upload keeps the session.
        data = b"abcdefgh"
        digest = str(Digest.from_bytes(data))
        r = await env.client.put(
            location, params={"digest": digest}, content=b"efgh", headers={"content-range": "2-5"}
        )
        oci_error(r, 416, "RANGE_INVALID")
        r = await env.client.patch(location, content=b"efgh", headers={"content-range": "4-7"})
        assert r.status_code == 202 and r.headers["range"] == "0-7"
        assert (await env.client.put(location, params={"digest": digest})).status_code == 201
        assert (await env.client.get(f"/v2/app/blobs/{digest}")).content == data


async def test_monolithic_uploads(tmp_path: Path) -> None:
    one, two = random_blob(5000, 14), random_blob(7000, 15)
    d1, d2 = Digest.from_bytes(one), Digest.from_bytes(two)
    async with serve(tmp_path) as env:
        # POST with ?digest= and the whole body.
        r = await env.client.post(f"/v2/app/blobs/uploads/?digest={d1}", content=one)
        assert r.status_code == 201
        assert r.headers["location"] == f"/v2/app/blobs/{d1}"
        # POST, then PUT with the whole body.
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.put(location, params={"digest": str(d2)}, content=two)
        assert r.status_code == 201
        assert (await env.client.get(f"/v2/app/blobs/{d1}")).content == one
        assert (await env.client.get(f"/v2/app/blobs/{d2}")).content == two
        assert await leftovers(env.upload_dir) == []


async def test_upload_with_the_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    data = random_blob(5000, 16)
    wrong = Digest.from_bytes(b"something else")
    async with serve(tmp_path) as env:
        r = await env.client.post(f"/v2/app/blobs/uploads/?digest={wrong}", content=data)
        oci_error(r, 400, "DIGEST_INVALID")
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.put(location, params={"digest": str(wrong)}, content=data)
        oci_error(r, 400, "DIGEST_INVALID")
        assert await env.resolver.blobs.stat(wrong) is None
        assert await env.resolver.blobs.stat(Digest.from_bytes(data)) is None
        # The failed session is over.
        oci_error(await env.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        assert await leftovers(env.upload_dir) == []


async def test_upload_session_errors(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        location = (await env.client.post("/v2/app/blobs/uploads")).headers["location"]
        session = location.rsplit("/", 1)[1]
        # PUT without ?digest= does not complete anything.
        oci_error(await env.client.put(location, content=b"x"), 400, "DIGEST_INVALID")
        # A session belongs to its repository.
        r = await env.client.get(f"/v2/other/blobs/uploads/{session}")
        oci_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
        for unknown in ("0" * 32, "ABC", "nope"):
            oci_error(
                await env.client.get(f"/v2/app/blobs/uploads/{unknown}"), 404, "BLOB_UPLOAD_UNKNOWN"
            )
        oci_error(await env.client.post(location), 405, "UNSUPPORTED")
        assert (await env.client.delete(location)).status_code == 204
        oci_error(await env.client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        oci_error(await env.client.patch(location, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
        assert await leftovers(env.upload_dir) == []


async def test_cross_repository_mount(tmp_path: Path) -> None:
    local = random_blob(4000, 17)
    remote = random_blob(4000, 18)
    async with serve(tmp_path) as env:
        d_local = Digest.from_bytes(local)
        r = await env.client.post(f"/v2/a/blobs/uploads/?digest={d_local}", content=local)
        assert r.status_code == 201
        # Held here: readable from any repository, so the mount succeeds at once.
        r = await env.client.post(f"/v2/b/blobs/uploads/?mount={d_local}&from=a")
        assert r.status_code == 201
        assert r.headers["location"] == f"/v2/b/blobs/{d_local}"
        assert r.headers["docker-content-digest"] == str(d_local)
        # Only upstream, and only under "up" (the fake scopes blobs by
        # repository, as distribution does): copied here so "b" resolves it.
        d_remote = env.upstream.add_blob("up", remote)
        r = await env.client.post(f"/v2/b/blobs/uploads/?mount={d_remote}&from=up")
        assert r.status_code == 201
        assert await env.resolver.blobs.stat(d_remote) is not None
        # Unknown everywhere: fall back to an upload session.
        unknown = Digest.from_bytes(b"unknown")
        r = await env.client.post(f"/v2/b/blobs/uploads/?mount={unknown}&from=a")
        assert r.status_code == 202
        assert r.headers["location"].startswith("/v2/b/blobs/uploads/")
        oci_error(
            await env.client.post(f"/v2/b/blobs/uploads/?mount={unknown}&from=BAD"),
            400,
            "NAME_INVALID",
        )


# -- listing -------------------------------------------------------------------------


async def follow(client: httpx.AsyncClient, url: str, key: str) -> tuple[list[str], int]:
    """Every item over every page, following ``Link`` headers; and the page count."""
    items: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        r = await client.get(next_url)
        assert r.status_code == 200, r.text
        items += r.json()[key]
        pages += 1
        link = r.headers.get("link")
        next_url = None
        if link is not None:
            assert link.endswith('>; rel="next"')
            next_url = link[1 : link.index(">")]
    return items, pages


async def test_tags_list_with_pagination(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        image = random_image(seed=19)
        for tag in ("e", "a", "d"):
            env.upstream.add("team/app", image, tag=tag)
        await push_blobs(env.client, "team/app", image)
        for tag in ("b", "c"):
            r = await env.client.put(
                f"/v2/team/app/manifests/{tag}",
                content=image.manifest.data,
                headers={"content-type": OCI_MANIFEST},
            )
            assert r.status_code == 201
        r = await env.client.get("/v2/team/app/tags/list")
        assert r.json() == {"name": "team/app", "tags": ["a", "b", "c", "d", "e"]}
        assert "link" not in r.headers
        r = await env.client.get("/v2/team/app/tags/list?n=2")
        assert r.json()["tags"] == ["a", "b"]
        assert r.headers["link"] == '</v2/team/app/tags/list?n=2&last=b>; rel="next"'
        r = await env.client.get("/v2/team/app/tags/list?n=2&last=b")
        assert r.json()["tags"] == ["c", "d"]
        tags, pages = await follow(env.client, "/v2/team/app/tags/list?n=2", "tags")
        assert tags == ["a", "b", "c", "d", "e"] and pages == 3
        r = await env.client.get("/v2/team/app/tags/list?n=0")
        assert r.json()["tags"] == [] and "link" not in r.headers


async def test_tags_list_errors(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        oci_error(await env.client.get("/v2/nobody/tags/list"), 404, "NAME_UNKNOWN")
        env.upstream.add("app", random_image(seed=20), tag="v1")
        for bad in ("abc", "-1", "1.5"):
            r = await env.client.get(f"/v2/app/tags/list?n={bad}")
            oci_error(r, 400, "PAGINATION_NUMBER_INVALID")


async def test_catalog_with_pagination(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        image = random_image(seed=21)
        for name in ("lib/zeta", "alpha", "lib/beta"):
            env.upstream.add(name, image, tag="v1")
        await push_blobs(env.client, "mine", image)
        r = await env.client.put(
            "/v2/mine/manifests/v1",
            content=image.manifest.data,
            headers={"content-type": OCI_MANIFEST},
        )
        assert r.status_code == 201
        r = await env.client.get("/v2/_catalog")
        assert r.json() == {"repositories": ["alpha", "lib/beta", "lib/zeta", "mine"]}
        r = await env.client.get("/v2/_catalog?n=3")
        assert r.headers["link"] == '</v2/_catalog?n=3&last=lib%2Fzeta>; rel="next"'
        repositories, pages = await follow(env.client, "/v2/_catalog?n=3", "repositories")
        assert repositories == ["alpha", "lib/beta", "lib/zeta", "mine"] and pages == 2
        oci_error(await env.client.get("/v2/_catalog?n=x"), 400, "PAGINATION_NUMBER_INVALID")


# -- failures ------------------------------------------------------------------------


async def test_upstream_failures_keep_their_status(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        env.upstream.faults.fail = True
        r = await env.client.get("/v2/app/manifests/v1")
        assert r.status_code == 502
        assert r.json()["errors"][0]["code"] == "UNKNOWN"
        env.upstream.faults.fail = False
        env.upstream.faults.rate_limited = 3.0
        oci_error(await env.client.get("/v2/app/manifests/v1"), 429, "TOOMANYREQUESTS")


async def test_unexpected_exception_is_a_logged_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("the disk caught fire")

    async with serve(tmp_path) as env:
        monkeypatch.setattr(env.resolver, "tags", broken)
        with caplog.at_level(logging.ERROR, logger="dockerconnect.asgi"):
            r = await env.client.get("/v2/app/tags/list")
        error = oci_error(r, 500, "UNKNOWN")
        assert "fire" not in error["message"]  # internals stay in the log
        assert any("the disk caught fire" in (rec.exc_text or "") for rec in caplog.records)


async def test_blob_that_breaks_mid_stream_aborts_the_response(tmp_path: Path) -> None:
    # Larger than the resolver holds back before letting readers in, so the
    # headers are out before the transfer breaks.
    data = random_blob(3_000_000, 22)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        env.upstream.faults.truncate_after = 300_000
        env.upstream.faults.truncations = 100  # more than the resolver resumes
        # The headers are out when the transfer breaks: the response must not
        # end as though it were complete.
        with pytest.raises(Exception) as info:
            await env.client.get(f"/v2/app/blobs/{digest}")
        assert not isinstance(info.value, AssertionError)
        env.upstream.faults.truncations = 0
        assert (await env.client.get(f"/v2/app/blobs/{digest}")).content == data


# -- administration ------------------------------------------------------------------


async def test_admin_check_and_connector_removal(tmp_path: Path) -> None:
    base = random_image(seed=23, layers=2)
    async with serve(tmp_path) as env:
        env.upstream.add("app", base, tag="base")
        # Push a manifest whose blobs live only behind the connector: accepted.
        r = await env.client.put(
            "/v2/app/manifests/v1",
            content=base.manifest.data,
            headers={"content-type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        report = (await env.client.get("/_dockerconnect/check/app/v1")).json()
        assert report["ok"] is True and report["missing"] == []
        assert report["manifest"]["digest"] == str(base.manifest.digest)
        assert {e["location"] for e in report["entries"]} == {"hub"}
        assert {e["digest"] for e in report["entries"]} == {str(d) for d in base.blobs}

        assert (await env.client.get("/_dockerconnect/connectors")).json() == {
            "connectors": ["hub"]
        }
        r = await env.client.post("/_dockerconnect/connectors/remove", params={"name": "hub"})
        assert r.json() == {"removed": "hub", "connectors": []}
        assert env.resolver.connectors == []
        report = (await env.client.get("/_dockerconnect/check/app/v1")).json()
        assert report["ok"] is False
        assert sorted(report["missing"]) == sorted(str(d) for d in base.blobs)

        r = await env.client.post("/_dockerconnect/connectors/remove", params={"name": "hub"})
        oci_error(r, 404, "UNKNOWN")
        stats = (await env.client.get("/_dockerconnect/stats")).json()
        assert stats["upstream_requests"]["hub:stat_blob"] >= 2
        oci_error(await env.client.get("/_dockerconnect/check/app/nope"), 404, "MANIFEST_UNKNOWN")
        oci_error(await env.client.get("/_dockerconnect/nothing"), 404, "UNKNOWN")


async def test_admin_endpoints_are_off_by_default(tmp_path: Path) -> None:
    async with serve(
        tmp_path,
    ) as env:
        plain = server.create_app(env.resolver, upload_dir=tmp_path / "other")
        transport = httpx.ASGITransport(app=plain)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            r = await client.post("/_dockerconnect/connectors/remove", params={"name": "hub"})
            oci_error(r, 404, "UNKNOWN")
        assert len(env.resolver.connectors) == 1


# -- the ASGI protocol itself ----------------------------------------------------------


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    extensions: dict[str, Any] | None = None,
    body: list[bytes] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Run one request through ``app``: every message it sent, and how many
    of the ``body`` chunks it read."""
    sent: list[dict[str, Any]] = []
    chunks = list(body or [b""])
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            more = read < len(chunks)
            return {"type": "http.request", "body": chunks[read - 1], "more_body": more}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "extensions": extensions or {},
    }
    await app(scope, receive, send)
    return sent, read


async def test_large_blobs_stream_in_bounded_chunks(tmp_path: Path) -> None:
    data = random_blob(5 * 1024 * 1024 + 17, 24)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        for _ in range(2):  # through the shared fetch, then from the store
            messages, _ = await call(env.app, "GET", f"/v2/app/blobs/{digest}")
            start, *bodies = messages
            assert start["status"] == 200
            assert all(len(m["body"]) <= server.CHUNK_SIZE for m in bodies)
            assert len(bodies) >= 5
            assert b"".join(m["body"] for m in bodies) == data
            assert [m.get("more_body", False) for m in bodies][-1] is False


async def test_pathsend_for_local_blob_files(tmp_path: Path) -> None:
    data = random_blob(200_000, 25)
    upstream = FakeUpstream("hub")
    digest = upstream.add_blob("app", data)
    blobs = FilesystemBlobStore(tmp_path / "store", name="local")
    resolver = Resolver(
        "local",
        manifests=FilesystemManifestStore(tmp_path / "store"),
        blobs=blobs,
        connectors=[upstream],
    )
    app = server.create_app(resolver, upload_dir=tmp_path / "uploads", blob_path=blobs.blob_path)
    extensions = {"http.response.pathsend": {}}
    async with resolver:
        # Cold: through the shared fetch. A blob this small is verified and
        # committed before any reader is let in, so it may already be a file.
        messages, _ = await call(app, "GET", f"/v2/app/blobs/{digest}", extensions=extensions)
        if messages[-1]["type"] == "http.response.pathsend":
            assert await anyio.Path(messages[-1]["path"]).read_bytes() == data
        else:
            assert b"".join(m.get("body", b"") for m in messages[1:]) == data
        # Warm: the server is handed the file (once its commit, which may
        # finish after the last byte, is done; until then a request joins
        # the fetch).
        await resolver.wait_idle()
        messages, _ = await call(app, "GET", f"/v2/app/blobs/{digest}", extensions=extensions)
        assert [m["type"] for m in messages] == ["http.response.start", "http.response.pathsend"]
        assert await anyio.Path(messages[1]["path"]).read_bytes() == data
        assert (b"content-length", str(len(data)).encode()) in messages[0]["headers"]
        # A range, or a server without the extension: streamed.
        messages, _ = await call(
            app,
            "GET",
            f"/v2/app/blobs/{digest}",
            headers=[(b"range", b"bytes=5-9")],
            extensions=extensions,
        )
        assert messages[0]["status"] == 206
        assert b"".join(m.get("body", b"") for m in messages[1:]) == data[5:10]
        messages, _ = await call(app, "GET", f"/v2/app/blobs/{digest}")
        assert messages[-1]["type"] == "http.response.body"


async def test_lifespan_opens_and_closes_the_registry(tmp_path: Path) -> None:
    image = random_image(seed=26)
    upstream = FakeUpstream("hub")
    upstream.add("app", image, tag="v1")
    resolver = Resolver(
        "local", manifests=MemoryManifestStore(), blobs=MemoryBlobStore(), connectors=[upstream]
    )
    app = server.create_app(resolver)  # its own temporary upload directory
    upload_dir: Path = app.uploads.directory
    to_app, app_inbox = anyio.create_memory_object_stream[dict[str, Any]](4)
    app_outbox, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)

    async def send(message: dict[str, Any]) -> None:
        await app_outbox.send(message)

    async with to_app, app_inbox, app_outbox, from_app, anyio.create_task_group() as tg:
        tg.start_soon(
            app, {"type": "lifespan", "asgi": {"version": "3.0"}}, app_inbox.receive, send
        )
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            r = await client.get("/v2/app/manifests/v1")
            assert r.status_code == 200 and r.content == image.manifest.data
            location = (await client.post("/v2/app/blobs/uploads/")).headers["location"]
            assert location
        assert await leftovers(upload_dir) != []
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    assert not await anyio.Path(upload_dir).exists()
    with pytest.raises(Exception, match="not open"):
        await resolver.get_manifest("app", "v1")


def test_command_line_builds_a_resolver_over_the_store(tmp_path: Path) -> None:
    config = parse_serve(
        [
            "--store",
            str(tmp_path / "store"),
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream",
            "https://registry.example",
        ]
    )
    resolver = build_resolver(config)
    assert resolver.name == "local"
    assert [c.name for c in resolver.connectors] == ["127.0.0.1:1", "registry.example"]
    assert isinstance(resolver.blobs, FilesystemBlobStore)
    assert resolver.policy.cache_blobs and resolver.policy.cache_manifests
    assert json.dumps(server.MAX_MANIFEST_SIZE) == str(4 * 1024 * 1024)
