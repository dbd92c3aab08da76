"""Findings of review (issue 10) and of the hostile-input trial (issue 11), each a test.

Each test failed before its fix. The slow-upstream, gzip and listing tests use
a hostile registry of our own on real sockets bound to 127.0.0.1
(``_hostile.py``); the others the scripted registry behind MockTransport.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from _hostile import Hostile, serving
from _http_fakes import REALM, REGISTRY, Chunks, Upstream

from dockerconnect import Digest, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect._manifest import OCI_INDEX, OCI_MANIFEST
from dockerconnect.errors import (
    InvalidInput,
    ListingTooLarge,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from dockerconnect.http import HttpConnector, Limits, ListingBounds, Retry
from dockerconnect.testing import RandomImage, random_image

pytestmark = pytest.mark.anyio

REPO = "team/app"
DEEP = b"[" * 100_000 + b"]" * 100_000  # about 200 KB, under every size cap
#: Tight limits so that tests of slow upstreams end quickly.
FAST = Limits(deadline=0.5, min_rate=4096, rate_window=0.3)


def image(size: int = 300_000, seed: int = 3) -> RandomImage:
    return random_image(layers=1, layer_size=size, seed=seed, layer_format="raw")


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., HttpConnector]]:
    made: list[HttpConnector] = []

    async def no_sleep(seconds: float) -> None:
        return None

    def factory(upstream: Upstream | None = None, **kwargs: object) -> HttpConnector:
        kwargs.setdefault("sleep", no_sleep)
        if upstream is not None:
            kwargs.setdefault("transport", upstream.transport())
        connector = HttpConnector(kwargs.pop("url", REGISTRY), **kwargs)  # type: ignore[arg-type]
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        await connector.aclose()


# -- issue 10.2 and 11.10: deep JSON --------------------------------------------------


def _deep(request: httpx.Request) -> httpx.Response | None:
    if request.url.host == "auth.test":
        return None
    kind = request.url.path.rsplit("/", 2)[-2]
    headers = {"Content-Type": OCI_MANIFEST if kind == "manifests" else "application/json"}
    return httpx.Response(200, headers=headers, content=DEEP)


@pytest.mark.parametrize("call", ["get_manifest", "head_manifest", "tags", "repositories"])
async def test_deep_json_from_the_upstream_is_an_upstream_error(
    make: Callable[..., HttpConnector], call: str
) -> None:
    up = Upstream()
    up.hooks.append(_deep)
    connector = make(up)
    calls = {
        "get_manifest": lambda: connector.get_manifest(REPO, "v1"),
        "head_manifest": lambda: connector.head_manifest(REPO, "v1"),  # no digest: a GET
        "tags": lambda: connector.tags(REPO),
        "repositories": lambda: connector.repositories(),
    }
    with pytest.raises(UpstreamError) as caught:
        await calls[call]()
    assert caught.value.connector == connector.name


async def test_deep_json_from_the_token_server(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    up.add(REPO, image(), "v1")
    up.hooks.append(
        lambda r: httpx.Response(200, content=DEEP) if r.url.host == "auth.test" else None
    )
    with pytest.raises(UpstreamError, match="token"):
        await make(up).get_manifest(REPO, "v1")


# -- issue 10.5: bad URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://127.0.0.1:99999", "http://bad host:5000", "http://h:0", "ftp://h"],
)
def test_bad_urls_are_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        HttpConnector(url)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://[::1]:5000", "[::1]:5000"),
        ("registry.example:5000/", "registry.example:5000"),
        ("https://münchen.example", "xn--mnchen-3ya.example"),
    ],
)
def test_good_urls_still_work(url: str, name: str) -> None:
    assert HttpConnector(url).name == name


# -- issue 10.6: one string as accept ---------------------------------------------------


async def test_a_single_accept_string_is_one_type(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img, "v1")
    manifest = await make(up).get_manifest(REPO, "v1", accept=OCI_MANIFEST)
    assert manifest is not None
    assert up.requests[-1].headers["accept"] == OCI_MANIFEST


# -- issue 10.7: resume keeps what was buffered -----------------------------------------


async def test_resume_keeps_buffered_bytes(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image(size=256 * 1024)
    up.add(REPO, img)
    digest = str(img.manifest.layers[0].digest)
    data = img.layers[0]
    half = len(data) // 2

    def cut_once(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and "range" not in request.headers:
            body = Chunks([data[:half]], fail_with=httpx.ReadError("connection reset"))
            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=body)
        return None

    up.hooks.append(cut_once)
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == data
    ranges = [r.headers.get("range") for r in up.requests if "/blobs/" in r.url.path]
    assert ranges == [None, "bytes=131072-"]


# -- issue 11.2: deadlines and minimum rate -----------------------------------------------


async def test_trickled_headers_time_out(make: Callable[..., HttpConnector]) -> None:
    async with serving(Hostile("trickle_headers", interval=0.05)) as hostile:
        connector = make(url=hostile.url, limits=FAST, retry=Retry(attempts=3))
        with pytest.raises(UpstreamTimeout) as caught:
            await connector.get_manifest(REPO, "v1")
    assert caught.value.connector == connector.name
    manifest_gets = [r for r in hostile.requests if "/manifests/" in r[1]]
    assert len(manifest_gets) == 1  # a deadline is not retried on the same upstream


async def test_trickled_manifest_body_times_out(make: Callable[..., HttpConnector]) -> None:
    img = image()
    hostile = Hostile(
        "trickle_body", body=img.manifest.data, content_type=OCI_MANIFEST, interval=0.05, step=2
    )
    async with serving(hostile):
        connector = make(url=hostile.url, limits=FAST)
        with pytest.raises(UpstreamTimeout):
            await connector.get_manifest(REPO, "v1")


async def test_blob_body_below_minimum_rate_fails(make: Callable[..., HttpConnector]) -> None:
    img = image(size=64 * 1024)
    data = img.layers[0]
    async with serving(Hostile("trickle_body", body=data, interval=0.05, step=64)) as hostile:
        connector = make(url=hostile.url, limits=FAST)
        stream = await connector.open_blob(REPO, img.manifest.layers[0].digest)
        assert stream is not None
        received = 0
        with pytest.raises(UpstreamTimeout):
            async for chunk in stream:
                received += len(chunk)
        await stream.aclose()
    assert received < len(data)
    blob_gets = [r for r in hostile.requests if "/blobs/" in r[1]]
    assert len(blob_gets) == 1  # too slow is not resumed from the same upstream


async def test_stalled_blob_body_fails(make: Callable[..., HttpConnector]) -> None:
    img = image(size=64 * 1024)
    async with serving(Hostile("trickle_body", body=img.layers[0], interval=30.0)) as hostile:
        connector = make(url=hostile.url, limits=FAST, max_resumes=1)
        stream = await connector.open_blob(REPO, img.manifest.layers[0].digest)
        assert stream is not None
        with pytest.raises(UpstreamError) as caught:
            await stream.read()
        await stream.aclose()
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len([r for r in hostile.requests if "/blobs/" in r[1]]) == 2  # one resume


async def test_resolver_fails_over_from_a_trickling_upstream(
    make: Callable[..., HttpConnector],
) -> None:
    healthy = Upstream()
    img = image()
    healthy.add(REPO, img, "v1")
    digest = img.manifest.layers[0].digest
    async with serving(Hostile("trickle_headers", interval=0.05)) as hostile:
        slow = make(url=hostile.url, name="slow", limits=FAST)
        good = make(healthy, name="good")
        async with Resolver(
            "local",
            manifests=MemoryManifestStore(),
            blobs=MemoryBlobStore(),
            connectors=[slow, good],
        ) as resolver:
            manifest = await resolver.get_manifest(REPO, "v1")
            assert manifest.digest == img.manifest.digest
            stream = await resolver.open_blob(REPO, digest)
            assert stream.source == "good"
            assert await stream.read() == img.layers[0]
            assert resolver.stats.upstream_errors["slow"] >= 1
    assert any("/blobs/" in r[1] for r in hostile.requests)


# -- issue 11.3: a listing is bounded ---------------------------------------------------


async def test_endless_large_pages_are_a_typed_error(make: Callable[..., HttpConnector]) -> None:
    bounds = ListingBounds(max_bytes=8 * 1024 * 1024, max_names=10**6)
    async with serving(Hostile("pages", page_bytes=3 * 1024 * 1024)) as hostile:
        connector = make(url=hostile.url, listing=bounds)
        with pytest.raises(ListingTooLarge) as caught:
            await connector.tags("hostile/app")
    assert isinstance(caught.value, UpstreamError)
    assert caught.value.connector == connector.name
    assert hostile.pages_served == 3  # the third page passes 8 MiB; no fourth is asked


async def test_too_many_names_is_a_typed_error(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.page_size = 100
    img = image(size=10)
    for i in range(250):
        up.add(REPO, img, f"t{i:04d}")
    with pytest.raises(ListingTooLarge, match="names"):
        await make(up, listing=ListingBounds(max_names=200)).tags(REPO)
    assert sorted(await make(up, listing=ListingBounds(max_names=250)).tags(REPO) or []) == [
        f"t{i:04d}" for i in range(250)
    ]


# -- issue 11.6: an HTML 200 to a blob HEAD is not "exists" ---------------------------------


async def test_html_answer_to_stat_blob(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.hooks.append(
        lambda r: (
            httpx.Response(
                200, headers={"Content-Type": "text/html; charset=utf-8", "Content-Length": "5120"}
            )
            if r.method == "HEAD"
            else None
        )
    )
    with pytest.raises(UpstreamError, match="HTML"):
        await make(up).stat_blob(REPO, Digest.from_bytes(b"nobody has this"))


# -- issue 11.8: could-not-ask is not "not found" on tag listing ------------------------------


async def test_redirect_loop_on_tags_is_upstream_error(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.hooks.append(
        lambda r: (
            httpx.Response(302, headers={"Location": str(r.url)})
            if "/tags/" in r.url.path
            else None
        )
    )
    with pytest.raises(UpstreamError, match="redirect") as caught:
        await make(up).tags(REPO)
    assert not isinstance(caught.value, NotFound)


@pytest.mark.parametrize("status", [200, 404])
async def test_html_answer_to_tags_is_upstream_error(
    make: Callable[..., HttpConnector], status: int
) -> None:
    up = Upstream()
    up.add(REPO, image(size=10), "v1")
    page = b"<html><body>Sign in</body></html>"
    up.hooks.append(
        lambda r: (
            httpx.Response(status, headers={"Content-Type": "text/html"}, content=page)
            if "/tags/" in r.url.path
            else None
        )
    )
    with pytest.raises(UpstreamError, match="HTML"):
        await make(up).tags(REPO)


# -- issue 11.9: credentials never in logs, at INFO or DEBUG --------------------------------


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
async def test_no_credentials_in_any_log_line(
    make: Callable[..., HttpConnector], caplog: pytest.LogCaptureFixture, level: int
) -> None:
    caplog.set_level(level)
    up = Upstream(auth="basic")
    img = image()
    up.add(REPO, img, "v1")
    digest = str(img.manifest.layers[0].digest)
    data = img.layers[0]
    signed = "https://bucket:hunter2@storage.test/b/x?X-Amz-Signature=SIGSECRET&X-Amz-Credential=AKIDSECRET"

    def storage(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "storage.test":
            return httpx.Response(200, content=data)
        if "/blobs/" in request.url.path and request.headers.get("authorization"):
            return httpx.Response(307, headers={"Location": signed})
        return None

    up.hooks.append(storage)
    connector = make(up, url="https://alice:s3cret@registry.test")
    assert await connector.get_manifest(REPO, "v1") is not None
    stream = await connector.open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == data
    lines = [r.getMessage() for r in caplog.records]
    assert any("storage.test" in line for line in lines)  # the redirect was logged
    for secret in ("s3cret", "hunter2", "SIGSECRET", "AKIDSECRET", "YWxpY2U6czNjcmV0"):
        assert not any(secret in line for line in lines), secret


# -- issue 11.14: a token that cannot go in a header ---------------------------------------


async def test_non_ascii_token_is_typed(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    up.add(REPO, image(), "v1")
    up.hooks.append(
        lambda r: (
            httpx.Response(200, json={"token": "tök€n"}) if r.url.host == "auth.test" else None
        )
    )
    with pytest.raises(UpstreamError, match="token") as caught:
        await make(up).get_manifest(REPO, "v1")
    assert caught.value.connector == "registry.test"
    assert any(r.url.host == "auth.test" for r in up.requests)
    assert REALM.startswith("https://auth.test")


# -- issue 11.17: a gzip layer served with Content-Encoding: gzip ---------------------------


@pytest.mark.parametrize("cut", [None, 150_000], ids=["whole", "cut-and-resumed"])
async def test_gzip_layer_is_read_raw(make: Callable[..., HttpConnector], cut: int | None) -> None:
    layer = gzip.compress(os.urandom(300_000), mtime=0)
    digest = Digest.from_bytes(layer)
    hostile = Hostile("gzip_blob", body=layer, cut_once=cut)
    async with serving(hostile):
        connector = make(url=hostile.url)
        found = await connector.stat_blob(REPO, digest)
        assert found is not None
        assert found.size == len(layer)
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        assert await stream.read() == layer  # verified against its digest on the way
    ranges = [h.get("range") for m, t, h in hostile.requests if m == "GET" and "/blobs/" in t]
    assert ranges == ([None] if cut is None else [None, f"bytes={cut}-"])


# -- issue 13: referrers over HTTP ------------------------------------------------------


def _referrer(subject: Digest, artifact_type: str, n: int) -> dict[str, object]:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": str(Digest.from_bytes(f"referrer {n}".encode())),
        "size": 500 + n,
        "artifactType": artifact_type,
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    }


def _referrers_api(
    subject: Digest, entries: list[dict[str, object]], *, page: int = 0, filters: bool = False
) -> Callable[[httpx.Request], httpx.Response | None]:
    def answer(request: httpx.Request) -> httpx.Response | None:
        if f"/referrers/{subject}" not in request.url.path:
            return None
        wanted = request.url.params.get("artifactType")
        found = [e for e in entries if not (filters and wanted) or e["artifactType"] == wanted]
        start = int(request.url.params.get("page", "0"))
        shown = found[start : start + page] if page else found
        headers = {"Content-Type": OCI_INDEX}
        if filters and wanted:
            headers["OCI-Filters-Applied"] = "artifactType"
        if page and start + page < len(found):
            headers["Link"] = f'<{request.url.path}?page={start + page}>; rel="next"'
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": shown}
        return httpx.Response(200, headers=headers, json=body)

    return answer


@pytest.mark.parametrize("filters", [True, False], ids=["upstream-filters", "we-filter"])
async def test_referrers_api(make: Callable[..., HttpConnector], filters: bool) -> None:
    subject = Digest.from_bytes(b"the subject manifest")
    sig, sbom = "application/vnd.example.signature", "application/spdx+json"
    entries = [_referrer(subject, sig if n % 2 else sbom, n) for n in range(5)]
    up = Upstream()
    up.hooks.append(_referrers_api(subject, entries, page=2, filters=filters))
    connector = make(up)
    found = await connector.referrers(REPO, subject)
    assert found is not None
    assert [str(d.digest) for d in found] == [e["digest"] for e in entries]
    assert found[1].artifact_type == sig
    assert found[0].annotations == entries[0]["annotations"]
    signatures = await connector.referrers(REPO, str(subject), artifact_type=sig)
    assert signatures is not None
    assert [d.artifact_type for d in signatures] == [sig, sig]
    asked = [r for r in up.requests if "/referrers/" in r.url.path]
    assert any(r.url.params.get("artifactType") == sig for r in asked)


async def test_no_referrers_is_empty_list(make: Callable[..., HttpConnector]) -> None:
    subject = Digest.from_bytes(b"nobody refers to me")
    up = Upstream()
    up.hooks.append(_referrers_api(subject, []))
    assert await make(up).referrers(REPO, subject) == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, text="404 page not found"),
        httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN", "message": "x"}]}),
        httpx.Response(405),
    ],
    ids=["plain-404", "oci-404", "405"],
)
async def test_no_referrers_api_is_none(
    make: Callable[..., HttpConnector], answer: httpx.Response
) -> None:
    up = Upstream()
    up.hooks.append(lambda r: answer if "/referrers/" in r.url.path else None)
    assert await make(up).referrers(REPO, Digest.from_bytes(b"s")) is None


async def test_referrers_errors_are_typed(make: Callable[..., HttpConnector]) -> None:
    subject = Digest.from_bytes(b"s")
    up = Upstream()
    bad = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": 3}]}
    up.hooks.append(
        lambda r: httpx.Response(200, json=bad) if "/referrers/" in r.url.path else None
    )
    connector = make(up)
    with pytest.raises(UpstreamError, match="invalid descriptor"):
        await connector.referrers(REPO, subject)
    up.hooks[:] = [
        lambda r: httpx.Response(200, content=DEEP) if "/referrers/" in r.url.path else None
    ]
    with pytest.raises(UpstreamError):
        await connector.referrers(REPO, subject)
    up.hooks[:] = [lambda r: httpx.Response(500) if "/referrers/" in r.url.path else None]
    with pytest.raises(UpstreamError):
        await make(up, retry=Retry(attempts=1)).referrers(REPO, subject)
    with pytest.raises(InvalidInput):
        await connector.referrers(REPO, "sha256:short")
    with pytest.raises(InvalidInput):
        await connector.referrers(REPO, subject, artifact_type="bad\ntype")
    assert await make(up, include=("other/*",)).referrers(REPO, subject) is None


# -- issue 11.12 (http side): huge or odd digit strings in headers ------------------------


@pytest.mark.parametrize("digits", ["9" * 5000, "²", "1" + "0" * 30])
async def test_odd_digits_in_headers_are_harmless(
    make: Callable[..., HttpConnector], digits: str
) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img, "v1")
    digest = str(img.manifest.layers[0].digest)

    def odd(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path:
            headers = {
                "Content-Length": digits,
                "Content-Range": f"bytes 0-{digits}/{digits}",
                "RateLimit-Limit": f"{digits};w={digits}",
                "RateLimit-Remaining": digits,
                "Retry-After": digits,
            }
            raw = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
            return httpx.Response(206 if "range" in request.headers else 200, headers=raw)
        return None

    up.hooks.append(odd)
    connector = make(up)
    manifest = await connector.get_manifest(REPO, "v1")
    assert manifest is not None
    with pytest.raises(UpstreamError):  # no usable size: typed, never ValueError
        await connector.stat_blob(REPO, digest)
    with pytest.raises(UpstreamError):
        await connector.open_blob(REPO, digest)


@pytest.mark.parametrize("realm", ["http://[::1", "ftp://auth.test/token", "/relative"])
async def test_unusable_token_realm_is_typed(
    make: Callable[..., HttpConnector], realm: str
) -> None:
    up = Upstream(auth="bearer")
    up.add(REPO, image(), "v1")
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="registry.test"'}
    up.hooks.append(
        lambda r: httpx.Response(401, headers=challenge) if r.url.host == "registry.test" else None
    )
    with pytest.raises(UpstreamError) as caught:
        await make(up).get_manifest(REPO, "v1")
    assert caught.value.connector == "registry.test"


def test_bad_limits_are_one_line_errors() -> None:
    for bad in (
        lambda: Limits(deadline=0),
        lambda: Limits(min_rate=-1),
        lambda: ListingBounds(max_names=0),
    ):
        with pytest.raises(InvalidInput) as caught:
            bad()
        assert "\n" not in str(caught.value)
