"""HttpConnector's rooms: offline conformance, one hashing pass, the public surface."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from _http_fakes import REGISTRY, Chunks, Upstream
from test_http_hash_once import REPO, blob_upstream

import dockerconnect.http
from dockerconnect import (
    BlobStream,
    Digest,
)
from dockerconnect._digest import DigestVerifier as ReExported
from dockerconnect._protocols import Connector
from dockerconnect._verify import DigestVerifier, hashes_to
from dockerconnect.errors import DigestMismatch, SizeInvalid
from dockerconnect.http import HttpConnector
from dockerconnect.testing import (
    ConnectorConformance,
    ConnectorFactory,
    RandomImage,
    RandomIndex,
)

pytestmark = pytest.mark.anyio


class TestHttpConnectorOffline(ConnectorConformance):
    """The connector suite against the scripted registry behind MockTransport."""

    @pytest.fixture
    async def connector_factory(self) -> AsyncIterator[ConnectorFactory]:
        made: list[HttpConnector] = []

        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> Connector:
            upstream = Upstream()
            upstream.page_size = 100
            for tag, content in images.items():
                upstream.add(repository, content, tag)
            connector = HttpConnector(REGISTRY, transport=upstream.transport(), name="offline")
            made.append(connector)
            return connector

        yield make
        for connector in made:
            await connector.aclose()


def test_http_all_is_pinned() -> None:
    assert set(dockerconnect.http.__all__) == {
        "DOCKER_HUB_URL",
        "Credentials",
        "HttpConnector",
        "Limits",
        "ListingBounds",
        "RateLimit",
        "Retry",
    }
    for name in dockerconnect.http.__all__:
        assert hasattr(dockerconnect.http, name), name


def test_one_verifier_class_everywhere() -> None:
    import dockerconnect

    assert ReExported is DigestVerifier
    assert dockerconnect.DigestVerifier is DigestVerifier
    assert not hasattr(DigestVerifier, "copy")


def test_digest_matches_goes_through_the_verifier() -> None:
    digest = Digest.from_bytes(b"abc")
    assert digest.matches(b"abc") and hashes_to(b"abc", digest)
    assert not digest.matches(b"abd")


def test_size_checks_have_one_error_class() -> None:
    digest = Digest.from_bytes(b"abcd")
    over = DigestVerifier(digest, 3)
    with pytest.raises(SizeInvalid):
        over.update(b"abcd")
    short = DigestVerifier(digest, 5, hashing=False)
    short.update(b"abcd")
    with pytest.raises(SizeInvalid):
        short.verify()
    counting = DigestVerifier(digest, 4, hashing=False)
    counting.update(b"zzzz")  # wrong bytes, right length: only the length is checked
    counting.verify()
    assert isinstance(SizeInvalid("x"), DigestMismatch)


async def test_deferred_stream_is_not_hashed_but_still_length_checked(hashed: list[int]) -> None:
    upstream, digest, data = blob_upstream()
    async with HttpConnector(REGISTRY, transport=upstream.transport()) as connector:
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        stream.defer_verification()
        assert stream.verification_deferred
        hashed[0] = 0
        assert await stream.read() == data
        assert hashed[0] == 0
        # Wrong bytes of the right length pass a deferred stream (the consumer
        # checks them); a wrong length never does.
        upstream.hooks.append(lambda r: httpx.Response(200, content=data[:-1] + b"!"))
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        stream.defer_verification()
        assert len(await stream.read()) == len(data)
        longer = Chunks([data, b"!"])
        headers = {"Content-Length": str(len(data))}
        upstream.hooks[:] = [lambda r: httpx.Response(200, headers=headers, stream=longer)]
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        stream.defer_verification()
        with pytest.raises(SizeInvalid) as caught:
            await stream.read()
        assert caught.value.connector == connector.name


async def test_defer_after_iteration_started_changes_nothing() -> None:
    upstream, digest, data = blob_upstream()
    async with HttpConnector(REGISTRY, transport=upstream.transport()) as connector:
        upstream.hooks.append(lambda r: httpx.Response(200, content=data[:-1] + b"!"))
        stream = await connector.open_blob(REPO, digest)
        assert stream is not None
        iterator = stream.__aiter__()
        await iterator.__anext__()
        stream.defer_verification()
        assert not stream.verification_deferred
        with pytest.raises(DigestMismatch):
            async for _ in iterator:
                pass
        await stream.aclose()


async def test_defer_verification_on_plain_chunks_is_harmless() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    stream = BlobStream(Digest.from_bytes(b"abc"), 3, chunks())
    stream.defer_verification()
    assert stream.verification_deferred
    assert await stream.read() == b"abc"
