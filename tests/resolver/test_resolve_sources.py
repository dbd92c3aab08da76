"""Resolution order, validation and the sources loop, with counting fake connectors."""

from __future__ import annotations

import pytest
from _resolve_helpers import make_resolver

from dockerconnect.errors import (
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    PaginationInvalid,
    ResolverClosed,
    TagInvalid,
    Unsupported,
)
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    random_image,
)

pytestmark = pytest.mark.anyio


# -- resolution order -------------------------------------------------------


async def test_local_first_then_connectors_in_order() -> None:
    image = random_image(seed=1)
    first, second = FakeUpstream("first"), FakeUpstream("second")
    second.add("app", image, tag="v1")
    a, b = CountingConnector(first), CountingConnector(second)
    async with make_resolver(a, b) as r:
        manifest = await r.get_manifest("app", "v1")
        assert manifest.data == image.manifest.data
        assert a.calls["get_manifest"] == 1 and b.calls["get_manifest"] == 1
        first.add("app", random_image(seed=2), tag="v1")
        # Cached and fresh: nobody is asked again, even though "first" now has it.
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert a.total == 1 and b.total == 1
        assert r.stats.hits["second"] == 1 and r.stats.hits["local"] == 1


async def test_first_hit_wins_and_later_connectors_are_not_asked() -> None:
    image = random_image(seed=3)
    first, second = FakeUpstream("first"), FakeUpstream("second")
    first.add("app", image, tag="v1")
    second.add("app", random_image(seed=4), tag="v1")
    b = CountingConnector(second)
    async with make_resolver(first, b) as r:
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert b.total == 0


async def test_connector_only_asked_for_repositories_it_serves() -> None:
    image = random_image(seed=5)
    hub = FakeUpstream("hub", include=("library/*",))
    hub.add("other/app", image, tag="v1")
    counted = CountingConnector(hub)
    async with make_resolver(counted) as r:
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("other/app", "v1")
        assert counted.total == 0


async def test_connectors_list_changes_are_seen_by_next_request() -> None:
    image = random_image(seed=6)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    async with make_resolver() as r:
        with pytest.raises(ManifestUnknown):
            await r.get_manifest("app", image.manifest.digest.__str__())
        r.connectors.append(upstream)
        assert (await r.get_manifest("app", str(image.manifest.digest))).data == image.manifest.data


async def test_invalid_input_rejected_before_any_io() -> None:
    upstream = CountingConnector(FakeUpstream("up"))
    async with make_resolver(upstream) as r:
        with pytest.raises(NameInvalid):
            await r.get_manifest("../etc", "latest")
        with pytest.raises(NameInvalid):
            await r.open_blob("UPPER", "sha256:" + "a" * 64)
        with pytest.raises(TagInvalid):
            await r.get_manifest("app", "bad/tag")
        with pytest.raises(DigestInvalid):
            await r.get_manifest("app", "sha256:short")
        with pytest.raises(DigestInvalid):
            await r.stat_blob("app", "sha256:" + "A" * 64)
        with pytest.raises(PaginationInvalid):
            await r.tags("app", n=-1)
    assert upstream.total == 0


async def test_closed_resolver_refuses_calls() -> None:
    r = make_resolver()
    with pytest.raises(ResolverClosed):
        await r.get_manifest("app", "latest")
    async with r:
        pass
    with pytest.raises(ResolverClosed):
        await r.open_blob("app", "sha256:" + "a" * 64)


async def test_unverifiable_digest_algorithm_refused_before_io() -> None:
    upstream = CountingConnector(FakeUpstream("up"))
    odd = "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"
    async with make_resolver(upstream) as r:
        with pytest.raises(Unsupported):
            await r.open_blob("app", odd)
        with pytest.raises(Unsupported):
            await r.get_manifest("app", odd)
        with pytest.raises(Unsupported):
            await r.stat_blob("app", odd)
    assert upstream.total == 0
