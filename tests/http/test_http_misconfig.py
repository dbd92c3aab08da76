"""Issue 12's upstream mistakes get errors a person can act on.

- a URL with the API path in it (``.../v2/``) is refused when the connector is built;
- a TLS handshake against a plain-http upstream hints at ``http://``;
- ``ping()`` names the URL it asked;
- a 404 from something that is not a registry is a failure, never a remembered miss.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.abc
import httpx
import pytest

from dockerconnect import MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.errors import InvalidInput, ManifestUnknown, UpstreamError
from dockerconnect.http import HttpConnector

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://r.example/v2/", "https://r.example"),
        ("https://r.example/v2", "https://r.example"),
        ("https://me:pw@r.example:5000/v2/library/", "https://r.example:5000"),
        ("r.example/mirror/v2/", "https://r.example/mirror"),
    ],
)
def test_a_url_with_the_api_path_is_refused_with_the_base_url(url: str, base: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        HttpConnector(url)
    message = str(caught.value)
    assert f"give the registry's base URL, {base}" in message
    assert "pw" not in message  # user info never shown


def test_a_base_url_with_a_path_prefix_is_fine() -> None:
    assert HttpConnector("https://r.example/mirror").url == "https://r.example/mirror"


async def _plain_http(stream: anyio.abc.ByteStream) -> None:
    """What a plain HTTP server answers to a TLS ClientHello: a 400, at once."""
    async with stream:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            await stream.receive(65536)
            await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


async def test_tls_against_a_plain_http_upstream_hints_at_http() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _plain_http)
        async with HttpConnector(f"https://127.0.0.1:{port}") as connector:
            with pytest.raises(UpstreamError) as caught:
                await connector.ping()
        tg.cancel_scope.cancel()
    message = str(caught.value)
    assert f"health probe GET https://127.0.0.1:{port}/v2/" in message
    assert f"if the upstream speaks plain HTTP, use http://127.0.0.1:{port}" in message


async def test_ping_names_the_url_it_asked() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="down for maintenance")

    transport = httpx.MockTransport(answer)
    async with HttpConnector("https://r.example/mirror", transport=transport) as connector:
        with pytest.raises(UpstreamError) as caught:
            await connector.ping()
    assert "health probe GET https://r.example/mirror/v2/ answered 500" in str(caught.value)


def _html_404(requests: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        return httpx.Response(
            404, headers={"content-type": "text/html"}, text="<html>Not Found</html>"
        )

    return httpx.MockTransport(answer)


async def test_a_404_page_from_a_non_registry_is_not_remembered_as_a_miss() -> None:
    requests: list[httpx.Request] = []
    web = HttpConnector("https://www.example", name="web", transport=_html_404(requests))
    async with (
        web,
        Resolver(
            "local", manifests=MemoryManifestStore(), blobs=MemoryBlobStore(), connectors=[web]
        ) as r,
    ):
        for _ in range(2):
            with pytest.raises(UpstreamError) as caught:
                await r.get_manifest("team/app", "v1")
            assert not isinstance(caught.value, ManifestUnknown)
        assert "does not look like a registry" in str(caught.value)
    asked = [q for q in requests if "/manifests/" in q.url.path]
    assert len(asked) == 2  # asked again: no negative cache entry


async def test_a_404_from_a_registry_is_still_a_miss() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            headers={"docker-distribution-api-version": "registry/2.0"},
            json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]},
        )

    connector = HttpConnector("https://r.example", transport=httpx.MockTransport(answer))
    async with connector:
        assert await connector.get_manifest("team/app", "v1") is None
