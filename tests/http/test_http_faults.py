"""HttpConnector against a scripted upstream behind httpx.MockTransport."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from _http_fakes import REGISTRY, Chunks, Upstream, oci_error

from dockerconnect import Digest, MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE
from dockerconnect.errors import (
    DigestMismatch,
    DockerConnectError,
    InvalidInput,
    RangeInvalid,
    TooManyRequests,
    Unauthorized,
    Unsupported,
    UpstreamError,
)
from dockerconnect.http import HttpConnector, Retry
from dockerconnect.testing import RandomImage, random_image, random_index

pytestmark = pytest.mark.anyio

REPO = "team/app"


def image(seed: int = 1, size: int = 3 * 1024 * 1024 + 17) -> RandomImage:
    return random_image(layers=1, layer_size=size, seed=seed, layer_format="raw")


class Sleeps:
    """An injected ``sleep`` that records and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make(sleeps: Sleeps) -> AsyncIterator[Callable[..., HttpConnector]]:
    made: list[HttpConnector] = []

    def factory(upstream: Upstream, **kwargs: object) -> HttpConnector:
        kwargs.setdefault("sleep", sleeps)
        connector = HttpConnector(
            kwargs.pop("url", REGISTRY),  # type: ignore[arg-type]
            transport=upstream.transport(),
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(connector)
        return connector

    yield factory
    for connector in made:
        await connector.aclose()


def layer(img: RandomImage) -> tuple[str, bytes]:
    return str(img.manifest.layers[0].digest), img.layers[0]


# -- manifests -------------------------------------------------------------------


async def test_manifest_by_tag_and_digest_with_accept(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img, "v1")
    c = make(up)
    got = await c.get_manifest(REPO, "v1")
    assert got is not None
    assert got.data == img.manifest.data
    accept = up.requests[-1].headers["accept"]
    assert all(t in accept for t in MANIFEST_MEDIA_TYPES)
    by_digest = await c.get_manifest(REPO, str(img.manifest.digest))
    assert by_digest is not None
    assert by_digest.digest == img.manifest.digest
    head = await c.head_manifest(REPO, "v1")
    assert head == img.manifest.descriptor()


async def test_missing_manifest_is_none_on_404_and_oci_code(
    make: Callable[..., HttpConnector],
) -> None:
    up = Upstream()
    up.add(REPO, image(), "v1")
    c = make(up)
    assert await c.get_manifest(REPO, "nope") is None
    assert await c.head_manifest(REPO, "nope") is None
    up.hooks.append(lambda r: oci_error(400, "MANIFEST_UNKNOWN"))
    assert await c.get_manifest(REPO, "v1") is None


async def test_wrong_docker_content_digest_on_manifest(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img, other = image(1), image(2)
    up.add(REPO, img, "v1")

    def lying(request: httpx.Request) -> httpx.Response | None:
        if "/manifests/" in request.url.path:
            return httpx.Response(
                200,
                content=img.manifest.data,
                headers={
                    "Content-Type": img.manifest.media_type,
                    "Docker-Content-Digest": str(other.manifest.digest),
                },
            )
        return None

    up.hooks.append(lying)
    c = make(up, name="up")
    with pytest.raises(DigestMismatch) as caught:
        await c.get_manifest(REPO, "v1")
    assert caught.value.connector == "up"


async def test_wrong_manifest_bytes_by_digest(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img, other = image(1), image(2)
    up.add(REPO, img, "v1")
    up.hooks.append(
        lambda r: httpx.Response(
            200,
            content=other.manifest.data,
            headers={"Content-Type": other.manifest.media_type},
        )
    )
    with pytest.raises(DigestMismatch):
        await make(up).get_manifest(REPO, str(img.manifest.digest))


async def test_manifest_size_cap(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    huge = b"{" + b" " * MAX_MANIFEST_SIZE + b"}"
    up.hooks.append(
        lambda r: httpx.Response(
            200, stream=Chunks([huge[i : i + 65536] for i in range(0, len(huge), 65536)])
        )
    )
    with pytest.raises(UpstreamError, match="limit"):
        await make(up).get_manifest(REPO, "v1")


async def test_invalid_manifest_is_upstream_error(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.hooks.append(lambda r: httpx.Response(200, content=b"<html>hello</html>"))
    with pytest.raises(UpstreamError, match="invalid manifest"):
        await make(up).get_manifest(REPO, "v1")


# -- blobs -------------------------------------------------------------------------


async def test_stat_and_open_blob(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img)
    c = make(up, name="up")
    digest, data = layer(img)
    found = await c.stat_blob(REPO, digest)
    assert found is not None
    assert found.size == len(data)
    stream = await c.open_blob(REPO, digest)
    assert stream is not None
    assert (stream.size, stream.source) == (len(data), "up")
    chunks = [chunk async for chunk in stream]
    assert b"".join(chunks) == data
    assert max(len(x) for x in chunks) <= 1024 * 1024
    assert up.requests[-1].headers["accept-encoding"] == "identity"


async def test_open_blob_from_offset_uses_range(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img)
    digest, data = layer(img)
    stream = await make(up).open_blob(REPO, digest, offset=1000)
    assert stream is not None
    assert (stream.size, stream.offset) == (len(data), 1000)
    assert await stream.read() == data[1000:]
    assert up.requests[-1].headers["range"] == "bytes=1000-"


async def test_offset_ignored_by_server_is_skipped_and_verified(
    make: Callable[..., HttpConnector],
) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)
    up.hooks.append(
        lambda r: httpx.Response(
            200, content=data[:-1] + b"X", headers={"Content-Length": str(len(data))}
        )
    )
    stream = await make(up).open_blob(REPO, digest, offset=10)
    assert stream is not None
    with pytest.raises(DigestMismatch):
        await stream.read()


async def test_offset_past_end(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image(size=100)
    up.add(REPO, img)
    digest, data = layer(img)
    c = make(up)
    with pytest.raises(RangeInvalid):
        await c.open_blob(REPO, digest, offset=len(data) + 5)
    at_end = await c.open_blob(REPO, digest, offset=len(data))
    assert at_end is not None
    assert await at_end.read() == b""


async def test_missing_blob(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    c = make(up)
    digest = str(image().manifest.layers[0].digest)
    assert await c.stat_blob(REPO, digest) is None
    assert await c.open_blob(REPO, digest) is None


async def test_truncated_body_is_resumed_with_range(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img)
    digest, data = layer(img)
    cut = len(data) // 2

    def truncate_once(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and "range" not in request.headers:
            headers = {"Content-Length": str(len(data))}
            return httpx.Response(200, headers=headers, stream=Chunks([data[:cut]]))
        return None

    up.hooks.append(truncate_once)
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == data
    assert up.requests[-1].headers["range"] == f"bytes={cut}-"


async def test_reset_mid_blob_then_resume(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    up.add(REPO, img)
    digest, data = layer(img)
    cut = 1024 * 1024 + 5

    def reset_once(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and "range" not in request.headers:
            body = Chunks([data[:cut]], fail_with=httpx.ReadError("connection reset by peer"))
            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=body)
        return None

    up.hooks.append(reset_once)
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == data
    ranges = [r.headers.get("range") for r in up.requests]
    assert ranges[0] is None
    assert len(ranges) == 2
    # Bytes buffered but not yet handed on when the connection broke are asked again.
    assert 0 < int(ranges[1][6:-1]) <= cut


async def test_endless_truncation_gives_up(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)

    def always_short(request: httpx.Request) -> httpx.Response:
        start = int(request.headers.get("range", "bytes=0-")[6:-1])
        headers = {"Content-Length": str(len(data) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return httpx.Response(
            206 if start else 200, headers=headers, stream=Chunks([data[start : start + 1000]])
        )

    up.hooks.append(always_short)
    stream = await make(up, max_resumes=2).open_blob(REPO, digest, offset=0)
    assert stream is not None
    received = bytearray()
    with pytest.raises(UpstreamError, match="after 2 resume"):
        async for chunk in stream:
            received += chunk
    assert len(up.requests) == 3
    # What arrived before the failure is right, so the caller may resume from there.
    assert bytes(received) == data[: len(received)]


async def test_wrong_bytes_never_complete(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    up.hooks.append(lambda r: httpx.Response(200, content=bytes(bad)))
    stream = await make(up, name="up").open_blob(REPO, digest)
    assert stream is not None
    received = 0
    with pytest.raises(DigestMismatch) as caught:
        async for chunk in stream:
            received += len(chunk)
    assert caught.value.connector == "up"
    # The last chunk is held back until verified: a reader never sees "all bytes".
    assert received < len(data)


async def test_unverified_blobs_under_a_resolver_still_never_cache_wrong_bytes(
    make: Callable[..., HttpConnector],
) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    up.hooks.append(lambda r: httpx.Response(200, content=bytes(bad)))
    connector = make(up, name="up", verify_blobs=False)
    # Alone, an unverified stream checks only the length.
    stream = await connector.open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == bytes(bad)
    # Under a Resolver, its cache writer verifies: the wrong bytes are refused.
    async with Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=[connector],
    ) as resolver:
        with pytest.raises(DigestMismatch):
            await (await resolver.open_blob(REPO, digest)).read()
        assert await resolver.blobs.stat(Digest.parse(digest)) is None


async def test_html_page_instead_of_blob(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    digest, _ = layer(img)
    page = b"<!doctype html><html><body>Please log in</body></html>"
    up.hooks.append(
        lambda r: httpx.Response(
            200, content=page, headers={"Content-Type": "text/html; charset=utf-8"}
        )
    )
    with pytest.raises(UpstreamError, match="HTML"):
        await make(up).open_blob(REPO, digest)
    # Served as if it were bytes, it fails verification instead.
    up.hooks[:] = [lambda r: httpx.Response(200, content=page)]
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    with pytest.raises(DigestMismatch):
        await stream.read()


async def test_unread_stream_releases_response(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)
    body = Chunks([data])
    up.hooks.append(
        lambda r: httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=body)
    )
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    await stream.aclose()
    assert body.closed


async def test_redirect_to_other_host_drops_authorization(
    make: Callable[..., HttpConnector],
) -> None:
    up = Upstream(auth="bearer")
    img = image()
    up.add(REPO, img)
    digest, data = layer(img)

    def storage(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "storage.test":
            return httpx.Response(
                200, content=data, headers={"Content-Type": "application/octet-stream"}
            )
        if "/blobs/" in request.url.path and request.headers.get("authorization"):
            return httpx.Response(
                307, headers={"Location": "https://storage.test/b/x?X-Sig=secret"}
            )
        return None

    up.hooks.append(storage)
    stream = await make(up).open_blob(REPO, digest)
    assert stream is not None
    assert await stream.read() == data
    to_storage = up.to("storage.test")
    assert len(to_storage) == 1
    assert "authorization" not in to_storage[0].headers
    assert any("authorization" in r.headers for r in up.to("registry.test"))


# -- auth -----------------------------------------------------------------------------


async def test_bearer_challenge_token_and_cache(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    img = image()
    up.add(REPO, img, "v1")
    up.add("team/other", img, "v1")
    c = make(up)
    assert await c.get_manifest(REPO, "v1") is not None
    assert len(up.token_requests) == 1
    params = up.token_requests[0].url.params
    assert params["scope"] == f"repository:{REPO}:pull"
    assert params["service"] == "registry.test"
    assert "authorization" not in up.token_requests[0].headers  # anonymous token
    assert await c.head_manifest(REPO, "v1") is not None
    assert await c.stat_blob(REPO, layer(img)[0]) is not None
    assert len(up.token_requests) == 1  # cached per scope
    assert await c.get_manifest("team/other", "v1") is not None
    assert len(up.token_requests) == 2
    # A known realm gets the new scope's token before the first request: no extra 401.
    statuses = [r.url.host for r in up.requests]
    assert statuses.count("auth.test") == 2


async def test_access_token_field_and_credentials(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer", token_field="access_token")
    up.add(REPO, image(), "v1")
    c = make(up, credentials=("alice", "s3cret"))
    assert await c.get_manifest(REPO, "v1") is not None
    sent = up.token_requests[0].headers["authorization"]
    assert sent == "Basic " + base64.b64encode(b"alice:s3cret").decode()


async def test_bad_credentials_at_token_server(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    up.add(REPO, image(), "v1")
    with pytest.raises(Unauthorized):
        await make(up, credentials=("alice", "wrong")).get_manifest(REPO, "v1")


async def test_expired_token_by_clock(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer", token_lifetime=60)
    up.add(REPO, image(), "v1")
    clock = Clock()
    c = make(up, clock=clock)
    assert await c.head_manifest(REPO, "v1") is not None
    clock.now += 30
    assert await c.head_manifest(REPO, "v1") is not None
    assert len(up.token_requests) == 1
    clock.now += 31
    assert await c.head_manifest(REPO, "v1") is not None
    assert len(up.token_requests) == 2
    assert not [r for r in up.to("registry.test")[2:] if r.headers.get("authorization") is None]


async def test_token_refused_by_registry_is_refreshed(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    up.add(REPO, image(), "v1")
    c = make(up)
    assert await c.head_manifest(REPO, "v1") is not None
    up.valid_tokens.clear()  # the registry expired it early
    assert await c.head_manifest(REPO, "v1") is not None
    assert len(up.token_requests) == 2


async def test_basic_auth(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="basic")
    up.add(REPO, image(), "v1")
    assert await make(up, credentials=("alice", "s3cret")).get_manifest(REPO, "v1") is not None
    with pytest.raises(Unauthorized) as caught:
        await make(up, credentials=("alice", "nope")).get_manifest(REPO, "v1")
    assert caught.value.connector == "registry.test"
    with pytest.raises(Unauthorized):
        await make(up).get_manifest(REPO, "v1")


async def test_credentials_not_sent_in_clear_to_a_third_host(
    make: Callable[..., HttpConnector],
) -> None:
    up = Upstream()

    def challenge(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "evil.test":
            return httpx.Response(200, json={"token": "t"})
        if request.headers.get("authorization") != "Bearer t":
            realm = 'Bearer realm="http://evil.test/token",service="x"'
            return oci_error(401, "UNAUTHORIZED", **{"WWW-Authenticate": realm})
        return oci_error(404, "MANIFEST_UNKNOWN")

    up.hooks.append(challenge)
    c = make(up, credentials=("alice", "s3cret"))
    assert await c.get_manifest(REPO, "v1") is None
    assert "authorization" not in up.to("evil.test")[0].headers


async def test_credentials_and_tokens_never_logged(
    make: Callable[..., HttpConnector], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    up = Upstream(auth="bearer")
    img = image()
    up.add(REPO, img, "v1")
    digest, _ = layer(img)
    up.hooks.append(
        lambda r: (
            httpx.Response(307, headers={"Location": "https://storage.test/o?sig=SIGNATURE"})
            if "/blobs/" in r.url.path and r.headers.get("authorization")
            else None
        )
    )
    c = make(up, url="https://alice:s3cret@registry.test")
    assert "s3cret" not in repr(c)
    await c.get_manifest(REPO, "v1")
    stream = await c.open_blob(REPO, digest)
    if stream is not None:
        await stream.aclose()
    everything = "\n".join(r.getMessage() for r in caplog.records)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dockerconnect"))
    assert ours
    secret_b64 = base64.b64encode(b"alice:s3cret").decode()
    for secret in ("s3cret", secret_b64, *up.valid_tokens):
        assert secret not in everything
    # httpx's own request log shows full URLs; ours never shows a pre-signed query.
    assert "SIGNATURE" not in ours


# -- resilience ---------------------------------------------------------------------


async def test_429_with_retry_after_then_success(
    make: Callable[..., HttpConnector], sleeps: Sleeps
) -> None:
    up = Upstream()
    up.add(REPO, image(), "v1")
    answers = [oci_error(429, "TOOMANYREQUESTS", **{"Retry-After": "7"})]
    up.hooks.append(lambda r: answers.pop() if answers else None)
    assert await make(up).get_manifest(REPO, "v1") is not None
    assert sleeps.calls == [7.0]


async def test_429_beyond_patience(make: Callable[..., HttpConnector], sleeps: Sleeps) -> None:
    up = Upstream()
    up.hooks.append(
        lambda r: oci_error(
            429, "TOOMANYREQUESTS", **{"Retry-After": "3600", "RateLimit-Remaining": "0;w=21600"}
        )
    )
    c = make(up)
    with pytest.raises(TooManyRequests) as caught:
        await c.get_manifest(REPO, "v1")
    assert caught.value.retry_after == 3600
    assert sleeps.calls == []
    assert c.rate_limit is not None
    assert c.rate_limit.remaining == 0


async def test_503_then_success(make: Callable[..., HttpConnector], sleeps: Sleeps) -> None:
    up = Upstream()
    up.add(REPO, image(), "v1")
    answers = [httpx.Response(503), httpx.Response(502)]
    up.hooks.append(lambda r: answers.pop() if answers else None)
    assert await make(up).head_manifest(REPO, "v1") is not None
    assert len(sleeps.calls) == 2
    assert 0.25 <= sleeps.calls[0] <= 0.5
    assert 0.5 <= sleeps.calls[1] <= 1.0


async def test_retries_are_bounded(make: Callable[..., HttpConnector], sleeps: Sleeps) -> None:
    up = Upstream()
    up.hooks.append(lambda r: httpx.Response(503))
    with pytest.raises(UpstreamError, match="503"):
        await make(up, retry=Retry(attempts=3)).get_manifest(REPO, "v1")
    assert len(up.requests) == 3
    assert len(sleeps.calls) == 2


async def test_total_deadline(make: Callable[..., HttpConnector], sleeps: Sleeps) -> None:
    up = Upstream()
    up.hooks.append(lambda r: httpx.Response(503, headers={"Retry-After": "5"}))
    with pytest.raises(UpstreamError):
        await make(up, retry=Retry(attempts=10, deadline=12)).get_manifest(REPO, "v1")
    # The clock does not move under the fake sleep: 5 + 5 fits in 12, 15 would not.
    assert len(up.requests) >= 2


async def test_connect_error_then_success(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.add(REPO, image(), "v1")
    failures = [httpx.ConnectError("refused")]

    def flaky(request: httpx.Request) -> httpx.Response | None:
        if failures:
            raise failures.pop()
        return None

    up.hooks.append(flaky)
    assert await make(up).get_manifest(REPO, "v1") is not None


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow"),
        httpx.ReadTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("garbage"),
        httpx.UnsupportedProtocol("gopher"),
        httpx.ProxyError("proxy"),
        httpx.DecodingError("bad gzip"),
        httpx.LocalProtocolError("bad"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_no_httpx_exception_escapes(
    make: Callable[..., HttpConnector], exc: Exception
) -> None:
    up = Upstream()

    def boom(request: httpx.Request) -> httpx.Response:
        raise exc

    up.hooks.append(boom)
    c = make(up, retry=Retry(attempts=2))
    digest = str(image().manifest.layers[0].digest)
    calls = [
        c.get_manifest(REPO, "v1"),
        c.head_manifest(REPO, "v1"),
        c.stat_blob(REPO, digest),
        c.open_blob(REPO, digest),
        c.tags(REPO),
        c.repositories(),
        c.ping(),
    ]
    for call in calls:
        with pytest.raises(UpstreamError) as caught:
            await call
        assert caught.value.connector == "registry.test"
        assert caught.value.__cause__ is exc


async def test_stream_errors_are_translated(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image()
    digest, data = layer(img)
    up.hooks.append(
        lambda r: httpx.Response(
            200,
            headers={"Content-Length": str(len(data))},
            stream=Chunks([data[:10]], fail_with=httpx.ReadTimeout("stalled")),
        )
    )
    stream = await make(up, max_resumes=1).open_blob(REPO, digest)
    assert stream is not None
    with pytest.raises(UpstreamError) as caught:
        await stream.read()
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_rate_limit_headers_exposed(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.add(REPO, image(), "v1")
    up.hooks.append(
        lambda r: httpx.Response(
            404,
            headers={
                "RateLimit-Limit": "100;w=21600",
                "RateLimit-Remaining": "76;w=21600",
                "Docker-RateLimit-Source": "192.0.2.1",
            },
        )
    )
    c = make(up)
    assert c.rate_limit is None
    await c.head_manifest(REPO, "v1")
    assert c.rate_limit is not None
    assert (c.rate_limit.limit, c.rate_limit.remaining, c.rate_limit.window) == (100, 76, 21600)
    assert c.rate_limit.source == "192.0.2.1"


async def test_ping(make: Callable[..., HttpConnector]) -> None:
    up = Upstream(auth="bearer")
    c = make(up)
    assert await c.ping() >= 0
    up.hooks.append(lambda r: httpx.Response(500))
    with pytest.raises(UpstreamError):
        await c.ping()


# -- listing --------------------------------------------------------------------------


async def test_tags_and_catalog_follow_link_pages(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    img = image(size=10)
    for tag in ("c", "a", "e", "b", "d"):
        up.add(REPO, img, tag)
    for repo in ("x/one", "x/two", "y/three"):
        up.add(repo, img)
    c = make(up)
    assert await c.tags(REPO) == ["a", "b", "c", "d", "e"]
    assert len(up.requests) == 3
    assert await c.repositories() == ["team/app", "x/one", "x/two", "y/three"]
    assert await c.tags("no/such") == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404),
        httpx.Response(401),
        httpx.Response(403),
        oci_error(400, "UNSUPPORTED"),
        oci_error(405, "UNSUPPORTED"),
    ],
    ids=["404", "401", "403", "unsupported", "405"],
)
async def test_no_catalog_is_none(
    make: Callable[..., HttpConnector], answer: httpx.Response
) -> None:
    up = Upstream()
    up.hooks.append(lambda r: answer)
    assert await make(up).repositories() is None


async def test_pagination_to_other_host_refused(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.hooks.append(
        lambda r: httpx.Response(
            200, json={"tags": ["a"]}, headers={"Link": '<https://evil.test/v2/x>; rel="next"'}
        )
    )
    with pytest.raises(UpstreamError, match="another host"):
        await make(up).tags(REPO)


# -- routing and validation --------------------------------------------------------


async def test_docker_hub_conventions(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()

    def hub(request: httpx.Request) -> httpx.Response:
        return oci_error(404, "MANIFEST_UNKNOWN")

    up.hooks.append(hub)
    c = make(up, url="docker.io")
    assert (c.name, c.url, c.library) == ("docker.io", "https://registry-1.docker.io", True)
    assert await c.get_manifest("nginx", "latest") is None
    assert up.requests[-1].url == "https://registry-1.docker.io/v2/library/nginx/manifests/latest"
    assert await c.get_manifest("bitnami/redis", "7") is None
    assert up.requests[-1].url.path == "/v2/bitnami/redis/manifests/7"
    assert HttpConnector("index.docker.io").url == "https://registry-1.docker.io"


async def test_prefix_include_exclude(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    up.add("library/nginx", image(), "v1")
    c = make(up, prefix="hub", library=True, include=["hub/*"], exclude=["hub/private/*"])
    assert c.serves("hub/nginx")
    assert c.serves("hub/a/b")
    assert not c.serves("nginx")
    assert not c.serves("hub/private/x")
    assert await c.get_manifest("hub/nginx", "v1") is not None
    assert up.requests[-1].url.path == "/v2/library/nginx/manifests/v1"
    before = len(up.requests)
    assert await c.get_manifest("other/nginx", "v1") is None
    assert await c.open_blob("hub/private/x", str(image().manifest.digest)) is None
    assert len(up.requests) == before
    assert await c.repositories() == ["hub/library/nginx"]
    star = make(up, include=["team/*"])
    assert star.serves("team/a/b/c")  # fnmatch: * also matches /


async def test_input_validated_before_io(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    c = make(up)
    for call in (
        c.get_manifest("UPPER/case", "v1"),
        c.get_manifest(REPO, "bad tag"),
        c.get_manifest(REPO, "sha256:123"),
        c.head_manifest("a//b", "v1"),
        c.stat_blob(REPO, "sha256:abc"),
        c.open_blob(REPO, "sha256:zz"),
        c.tags("-x"),
    ):
        with pytest.raises(InvalidInput):
            await call
    with pytest.raises(DockerConnectError):
        await c.open_blob(REPO, "sha256:" + "0" * 64, offset=-1)
    with pytest.raises(Unsupported):
        await c.open_blob(REPO, "md5:" + "0" * 32)
    assert up.requests == []


async def test_index_children(make: Callable[..., HttpConnector]) -> None:
    up = Upstream()
    index = random_index(seed=3)
    up.add(REPO, index, "multi")
    c = make(up)
    top = await c.get_manifest(REPO, "multi")
    assert top is not None
    assert top.is_index
    for child in index.children:
        got = await c.get_manifest(REPO, str(child.manifest.digest))
        assert got is not None
        assert got.data == child.manifest.data
