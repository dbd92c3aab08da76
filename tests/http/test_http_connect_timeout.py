"""Per-connector connect timeout: a short dial bound, the other parts kept."""

from __future__ import annotations

import httpx
import pytest

from dockerconnect.errors import InvalidInput
from dockerconnect.http import HttpConnector

pytestmark = pytest.mark.anyio


async def test_connect_timeout_bounds_each_connect_and_keeps_the_rest() -> None:
    seen: list[dict[str, float | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        return httpx.Response(404)

    connector = HttpConnector(
        "http://127.0.0.1:5999",
        transport=httpx.MockTransport(answer),
        timeout=httpx.Timeout(30.0, connect=10.0),
        connect_timeout=1.5,
    )
    async with connector:
        assert await connector.head_manifest("app", "v1") is None
    assert seen and all(t["connect"] == 1.5 and t["read"] == 30.0 for t in seen)


@pytest.mark.parametrize("bad", [0, -1.0, True, "1"])
def test_connect_timeout_must_be_positive_seconds(bad: object) -> None:
    with pytest.raises(InvalidInput, match="connect_timeout"):
        HttpConnector("http://127.0.0.1:5999", connect_timeout=bad)  # type: ignore[arg-type]
