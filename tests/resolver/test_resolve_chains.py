"""Registries as connectors of each other: chains, cycles, diamonds, errors passed through."""

from __future__ import annotations

import logging

import anyio
import pytest
from _resolve_helpers import make_resolver, read_all

from dockerconnect import (
    Digest,
    RegistryConnector,
    Resolver,
)
from dockerconnect.errors import (
    BlobUnknown,
    ManifestUnknown,
    TooManyRequests,
    UpstreamError,
)
from dockerconnect.testing import (
    FakeUpstream,
    random_image,
)

pytestmark = pytest.mark.anyio


# -- registry connectors ----------------------------------------------------


async def test_registry_connector_chain_prerelease_to_release() -> None:
    image = random_image(seed=36)
    async with make_resolver(name="release") as release:
        for digest, data in image.blobs.items():
            await release.push_blob("app", data, digest=digest)
        await release.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="1.0"
        )
        async with make_resolver(RegistryConnector(release), name="prerelease") as pre:
            manifest = await pre.get_manifest("app", "1.0")
            assert manifest.digest == image.manifest.digest
            for layer in manifest.blobs():
                stream = await pre.open_blob("app", layer.digest)
                assert stream.source == "release"
                assert await read_all(stream) == image.blobs[layer.digest]
                assert (await pre.stat_blob("app", layer.digest)).size == len(
                    image.blobs[layer.digest]
                )
            assert await pre.tags("app") == ["1.0"]


async def test_connector_cycle_is_refused_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    async with make_resolver(name="a") as a, make_resolver(name="b") as b:
        a.connectors.append(RegistryConnector(b))
        b.connectors.append(RegistryConnector(a))
        with caplog.at_level(logging.INFO, logger="dockerconnect"), anyio.fail_after(5):
            with pytest.raises(ManifestUnknown):
                await a.get_manifest("app", "v1")
            with pytest.raises(BlobUnknown):
                await a.open_blob("app", Digest.from_bytes(b"x"))
        assert b.stats.cycles_refused >= 1
        assert any("loop" in m for m in caplog.messages)


async def test_concurrent_requests_into_a_cycle_do_not_deadlock() -> None:
    async with make_resolver(name="a") as a, make_resolver(name="b") as b:
        a.connectors.append(RegistryConnector(b))
        b.connectors.append(RegistryConnector(a))
        digest = Digest.from_bytes(b"nowhere")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for r in (a, b, a, b):
                    tg.start_soon(_expect_unknown, r, digest)


async def _expect_unknown(r: Resolver, digest: Digest) -> None:
    with pytest.raises((BlobUnknown, UpstreamError)):
        await r.open_blob("app", digest)


async def test_diamond_is_not_a_cycle() -> None:
    image = random_image(seed=37)
    async with make_resolver(name="d") as d:
        for digest, data in image.blobs.items():
            await d.push_blob("app", data, digest=digest)
        await d.push_manifest(
            "app", image.manifest.data, media_type=image.manifest.media_type, tag="v1"
        )
        async with (
            make_resolver(RegistryConnector(d), name="b") as b,
            make_resolver(RegistryConnector(d), name="c") as c,
            make_resolver(RegistryConnector(b), RegistryConnector(c), name="a") as a,
        ):
            assert (await a.get_manifest("app", "v1")).digest == image.manifest.digest
            assert a.stats.cycles_refused == 0
            assert b.stats.cycles_refused == 0 and c.stats.cycles_refused == 0


async def test_upstream_errors_pass_through_registry_connector() -> None:
    down = FakeUpstream("down")
    down.faults.rate_limited = 3.0
    async with (
        make_resolver(down, name="inner") as inner,
        make_resolver(RegistryConnector(inner), name="outer") as outer,
    ):
        with pytest.raises(TooManyRequests) as info:
            await outer.get_manifest("app", "v1")
        assert info.value.connector == "down"
