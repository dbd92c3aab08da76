"""The server's warm path, made cheaper, answers as before.

- ``route`` matches manifests and blobs without its table: held here to the
  table's answer for any path.
- ``ServerMetrics`` keeps each label set's series at hand: the counts are
  the ones ``labels()`` would have given, a route gains a bytes series only
  once it sent a byte, and the series kept are bounded.
- A request's query is parsed when asked for; headers given as any iterable
  can be read more than once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dockerconnect import DockerConnectError
from dockerconnect.asgi import _ops
from dockerconnect.asgi._http import Request
from dockerconnect.asgi._routing import Route, route, table_route
from dockerconnect.testing import random_image

from ._support import serve

_PARTS = [
    "app", "a", "b-c", "manifests", "blobs", "uploads", "tags", "list", "referrers", "",
    "sha256:" + "a" * 64, "v1", "UPPER", "_x", "..", ".", "x" * 300, "a__b", "%2F",
]  # fmt: skip


def _outcome(function: object, path: str) -> Route | tuple[str, str]:
    try:
        return function(path)  # type: ignore[operator,no-any-return]
    except DockerConnectError as exc:
        return type(exc).__name__, str(exc)


@given(st.lists(st.sampled_from(_PARTS), min_size=0, max_size=6))
@example(["app", "manifests", "v1"])
@example(["app", "blobs", "uploads"])
@example(["app", "blobs", "uploads", ""])
@example(["app", "blobs", "uploads", "sha256:" + "a" * 64])
@example(["blobs", "sha256:" + "a" * 64])
@example(["manifests", "manifests", "manifests"])
@example(["UPPER", "manifests", "v1"])
@example(["app", "manifests", ""])
def test_the_quick_routes_answer_as_the_table_does(parts: list[str]) -> None:
    for path in ("/v2/" + "/".join(parts), "/v2"):
        assert _outcome(route, path) == _outcome(table_route, path)


@pytest.mark.anyio
async def test_metrics_count_as_labels_would(tmp_path: Path) -> None:
    image = random_image(seed=71)
    async with serve(tmp_path) as env:
        env.upstream.add("app", image, tag="v1")
        for _ in range(3):
            assert (await env.client.get("/v2/app/manifests/v1")).status_code == 200
        for _ in range(2):
            assert (await env.client.head("/v2/app/manifests/v1")).status_code == 200
        missing = await env.client.get("/v2/app/manifests/v2")
        assert missing.status_code == 404
        text = (await env.client.get("/metrics")).text
    requests = "dockerconnect_http_requests_total"
    assert f'{requests}{{method="GET",route="manifest",status="200"}} 3.0' in text
    assert f'{requests}{{method="HEAD",route="manifest",status="200"}} 2.0' in text
    assert f'{requests}{{method="GET",route="manifest",status="404"}} 1.0' in text
    assert 'dockerconnect_http_request_duration_seconds_count{route="manifest"} 6.0' in text
    sent = 3 * len(image.manifest.data) + len(missing.content)  # HEADs send no body
    assert f'dockerconnect_http_response_bytes_total{{route="manifest"}} {float(sent)}' in text
    # No byte was ever sent under the "blob" route: it has no series.
    assert 'route="blob"' not in text


def test_a_clients_method_names_make_no_new_series() -> None:
    metrics = _ops.ServerMetrics(object())
    for n in range(50):
        metrics.observe(f"M{n}", "manifest", 405, 0.001, 10)
    metrics.observe("GET", "manifest", 200, 0.001, 5)
    text = metrics.render().decode()
    requests = "dockerconnect_http_requests_total"
    assert f'{requests}{{method="other",route="manifest",status="405"}} 50.0' in text
    assert f'{requests}{{method="GET",route="manifest",status="200"}} 1.0' in text
    assert 'method="M' not in text
    assert 'dockerconnect_http_response_bytes_total{route="manifest"} 505.0' in text


def test_a_request_reads_its_query_and_headers_when_asked() -> None:
    async def receive() -> dict[str, object]:
        raise AssertionError("no body is read")

    headers = iter([(b"accept", b"a/b, c/d;q=0.5"), (b"range", b"bytes=0-1")])
    scope = {"method": "GET", "path": "/v2/", "query_string": b"n=2&last=b", "headers": headers}
    request = Request(scope, receive)
    assert request.header_values("accept") == ["a/b", "c/d"]
    assert request.header("RANGE") == "bytes=0-1"
    assert request.header("accept") == "a/b, c/d;q=0.5"
    assert request.param("n") == "2" and request.param("last") == "b"
    assert request.param("nothing") is None
    bare = Request({"method": "GET", "path": "/v2/"}, receive)
    assert bare.query == {} and bare.header("accept") is None
