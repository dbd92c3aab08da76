"""Tag and catalog listing: merged, sorted, paged."""

from __future__ import annotations

import pytest
from _resolve_helpers import make_resolver

from dockerconnect.errors import (
    NameUnknown,
)
from dockerconnect.testing import (
    FakeUpstream,
    random_image,
)

pytestmark = pytest.mark.anyio


# -- listing ----------------------------------------------------------------


async def test_tags_merged_sorted_paginated_and_unlistable_skipped() -> None:
    a, b, hub = FakeUpstream("a"), FakeUpstream("b"), FakeUpstream("hub", can_list=False)
    a.add("app", random_image(seed=29), tag="v2")
    a.add("app", random_image(seed=30), tag="v1")
    b.add("app", random_image(seed=31), tag="v3")
    b.add("app", random_image(seed=32), tag="v1")
    async with make_resolver(a, b, hub) as r:
        assert await r.tags("app") == ["v1", "v2", "v3"]
        assert await r.tags("app", n=2) == ["v1", "v2"]
        assert await r.tags("app", last="v1") == ["v2", "v3"]
        assert await r.tags("app", n=1, last="v2") == ["v3"]
        assert r.stats.listings_skipped == 4
        with pytest.raises(NameUnknown):
            await r.tags("nobody/knows")


async def test_catalog_merged_and_no_catalog_is_skipped() -> None:
    a, hub = FakeUpstream("a"), FakeUpstream("hub", has_catalog=False)
    a.add("zeta", random_image(seed=33), tag="v1")
    a.add("alpha", random_image(seed=34), tag="v1")
    async with make_resolver(a, hub) as r:
        image = random_image(seed=35)
        for digest, data in image.blobs.items():
            await r.push_blob("mid", data, digest=digest)
        await r.push_manifest(
            "mid", image.manifest.data, media_type=image.manifest.media_type, tag="x"
        )
        assert await r.repositories() == ["alpha", "mid", "zeta"]
        assert await r.repositories(n=1, last="alpha") == ["mid"]
        assert r.stats.listings_skipped == 2
