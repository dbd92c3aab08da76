"""Under a Resolver, an upstream too slow in the middle of a blob body is left for the next one.

``HttpConnector`` ends a body that falls below its minimum rate with
``UpstreamTimeout`` and does not resume it itself (the same upstream would
be as slow again). Once readers hold bytes, the Resolver must not resume it
from that upstream either, but from the next connector, at the first byte it
has not received. The slow upstream is the hostile registry of
``_hostile.py`` on 127.0.0.1; the healthy one the scripted registry.
"""

from __future__ import annotations

import pytest
from _hostile import Hostile, serving
from _http_fakes import REGISTRY, Upstream

from dockerconnect import MemoryBlobStore, MemoryManifestStore, Resolver
from dockerconnect.http import HttpConnector, Limits
from dockerconnect.testing import random_image

pytestmark = pytest.mark.anyio

REPO = "team/app"
#: A body below 4 KiB/s over 0.3 s is too slow; any request ends within 2 s.
FAST = Limits(deadline=2.0, min_rate=4096, rate_window=0.3)


async def test_upstream_timeout_mid_body_fails_over_to_the_next_connector() -> None:
    img = random_image(layers=1, layer_size=3 * 1024 * 1024, seed=17, layer_format="raw")
    data, digest = img.layers[0], img.manifest.layers[0].digest
    healthy = Upstream()
    healthy.add(REPO, img, "v1")
    # 2 MiB at once (past the point where readers are let in), then 64 bytes per 50 ms.
    hostile = Hostile("trickle_body", body=data, interval=0.05, step=64, fast=2 * 1024 * 1024)
    async with serving(hostile):
        slow = HttpConnector(hostile.url, name="slow", limits=FAST)
        good = HttpConnector(REGISTRY, name="good", transport=healthy.transport())
        async with (
            slow,
            good,
            Resolver(
                "local",
                manifests=MemoryManifestStore(),
                blobs=MemoryBlobStore(),
                connectors=[slow, good],
            ) as resolver,
        ):
            stream = await resolver.open_blob(REPO, digest)
            assert stream.source == "slow"  # readers were let in on the slow one's bytes
            assert await stream.read() == data
            assert resolver.stats.resumes == 1
            assert await resolver.blobs.stat(digest) is not None
    slow_gets = [r for r in hostile.requests if "/blobs/" in r[1] and r[0] == "GET"]
    assert len(slow_gets) == 1  # never resumed from the upstream that was too slow
    ranges = [r.headers.get("range") for r in healthy.requests if "/blobs/" in r.url.path]
    assert len(ranges) == 1 and ranges[0] is not None
    first = int(ranges[0].removeprefix("bytes=").split("-")[0])
    assert 2 * 1024 * 1024 <= first < len(data)  # only what was missing
