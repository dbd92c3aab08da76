"""Resolver.referrers, rule by rule (DESIGN.md "Referrers"), on asyncio and trio.

Merge order and de-duplication, the artifact-type filter, ``[]`` for an
unknown subject, the TTL and stale-if-error with an injected clock, a local
push visible at once, a delete, the tag-schema fallback, chains and loops,
and bad input. What reached each upstream is counted.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from _referrer_helpers import (
    SBOM,
    SIG,
    ApiUpstream,
    WithoutReferrers,
    artifact,
    put_tag_schema,
    schema_tag,
    tag_schema_index,
)

from dockerconnect import (
    OCI_MANIFEST,
    CachingPolicy,
    Descriptor,
    FilesystemBlobStore,
    FilesystemManifestStore,
    HealthPolicy,
    MemoryBlobStore,
    MemoryManifestStore,
    RegistryConnector,
    Resolver,
)
from dockerconnect.errors import (
    DigestInvalid,
    DockerConnectError,
    InvalidInput,
    NameInvalid,
    TooManyRequests,
    UpstreamError,
)
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def resolver(*connectors: object, clock: Clock | None = None, **kwargs: object) -> Resolver:
    return Resolver(
        "local",
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,  # type: ignore[arg-type]
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


async def push(r: Resolver, repository: str, image: object, tag: str | None = None) -> None:
    for digest, data in image.blobs.items():  # type: ignore[attr-defined]
        await r.push_blob(repository, data, digest=digest)
    manifest = image.manifest  # type: ignore[attr-defined]
    await r.push_manifest(repository, manifest.data, media_type=manifest.media_type, tag=tag)


# -- local referrers --------------------------------------------------------------


async def test_a_pushed_referrer_is_listed_at_once_and_a_delete_removes_it() -> None:
    image = random_image(seed=1)
    sbom, sig = artifact(image.manifest, SBOM, seed=2), artifact(image.manifest, SIG, seed=3)
    async with resolver() as r:
        # Before the subject exists ("Pushing Manifests with Subject").
        await push(r, "app", sbom)
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        await push(r, "app", image, tag="v1")
        await push(r, "app", sig)
        listed = await r.referrers("app", str(image.manifest.digest))
        assert sorted(d.digest for d in listed) == sorted(
            [sbom.manifest.digest, sig.manifest.digest]
        )
        found = {d.digest: d for d in listed}[sig.manifest.digest]
        assert found.artifact_type == SIG
        assert found.annotations == {"seed": "3"}
        assert found.size == len(sig.manifest.data)
        await r.delete_manifest("app", str(sbom.manifest.digest))
        assert await r.referrers("app", image.manifest.digest) == [sig.manifest.referrer()]
        # Per repository, as the manifests themselves are.
        assert await r.referrers("other", image.manifest.digest) == []


async def test_an_unknown_subject_has_no_referrers_anywhere() -> None:
    upstream = CountingConnector(FakeUpstream("hub"))
    api = ApiUpstream("api")
    subject = random_image(seed=4).manifest.digest
    async with resolver(upstream, api) as r:
        assert await r.referrers("app", subject) == []
        assert await r.referrers("app", subject, artifact_type=SBOM) == []
    # One tag-schema lookup from the connector without the API, one API call.
    assert upstream.calls == {"get_manifest": 1}
    assert api.calls == {"referrers": 1}
    assert r.stats.requests_to("api", "referrers") == 1
    assert r.stats.requests_to("hub", "get_manifest") == 1


# -- merging ----------------------------------------------------------------------


async def test_local_first_then_connectors_in_order_deduplicated_by_digest() -> None:
    image = random_image(seed=5)
    local_one = artifact(image.manifest, SBOM, seed=6)
    shared = artifact(image.manifest, SIG, seed=7)
    last = artifact(image.manifest, SIG, seed=8)
    first = ApiUpstream("first")
    first.add("app", local_one)  # also upstream: listed once, as the local copy
    first.add("app", shared)
    second = FakeUpstream("second")  # no API: the tag schema
    relabelled = Descriptor(
        OCI_MANIFEST,
        shared.manifest.digest,
        len(shared.manifest.data),
        annotations={"from": "second"},
        artifact_type=SIG,
    )
    second.add("app", shared)
    second.add("app", last)
    second.add(
        "app", tag_schema_index(relabelled, last.manifest), tag=schema_tag(image.manifest.digest)
    )
    async with resolver(first, second) as r:
        await push(r, "app", local_one)
        listed = await r.referrers("app", image.manifest.digest)
    assert [d.digest for d in listed] == [
        local_one.manifest.digest,
        shared.manifest.digest,
        last.manifest.digest,
    ]
    # The first source to list a digest describes it.
    assert listed[1] == shared.manifest.referrer()
    assert listed[1].annotations == {"seed": "7"}


async def test_the_artifact_type_filter_keeps_only_that_type() -> None:
    image = random_image(seed=9)
    sbom, sig = artifact(image.manifest, SBOM, seed=10), artifact(image.manifest, SIG, seed=11)
    upstream = ApiUpstream("api")
    upstream.add("app", sig)
    async with resolver(upstream) as r:
        await push(r, "app", sbom)
        assert await r.referrers("app", image.manifest.digest, artifact_type=SIG) == [
            sig.manifest.referrer()
        ]
        assert await r.referrers("app", image.manifest.digest, artifact_type=SBOM) == [
            sbom.manifest.referrer()
        ]
        assert await r.referrers("app", image.manifest.digest, artifact_type="x/none") == []
    # The connector's answer is kept whole: one request served every filter.
    assert upstream.calls == {"referrers": 1}


# -- caching: TTL and stale-if-error -----------------------------------------------


async def test_connector_answers_are_reused_for_referrers_ttl() -> None:
    clock = Clock()
    image = random_image(seed=12)
    sbom, sig = artifact(image.manifest, SBOM, seed=13), artifact(image.manifest, SIG, seed=14)
    upstream = ApiUpstream("api")
    upstream.add("app", sbom)
    policy = CachingPolicy(referrers_ttl=60.0)
    async with resolver(upstream, clock=clock, policy=policy) as r:
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        upstream.add("app", sig)
        clock.now += 59.0
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        assert upstream.calls == {"referrers": 1}
        assert r.stats.referrers_cached == 1
        clock.now += 2.0
        assert len(await r.referrers("app", image.manifest.digest)) == 2
        assert upstream.calls == {"referrers": 2}


async def test_referrers_ttl_zero_always_asks() -> None:
    upstream = CountingConnector(FakeUpstream("hub"))
    subject = random_image(seed=15).manifest.digest
    async with resolver(upstream, policy=CachingPolicy(referrers_ttl=0)) as r:
        for _ in range(3):
            assert await r.referrers("app", subject) == []
    assert upstream.calls == {"get_manifest": 3}


async def test_per_connector_overrides_apply_to_referrers_ttl() -> None:
    clock = Clock()
    fast, slow = ApiUpstream("fast"), ApiUpstream("slow")
    subject = random_image(seed=16).manifest.digest
    overrides = {"fast": CachingPolicy(referrers_ttl=0)}
    async with resolver(fast, slow, clock=clock, overrides=overrides) as r:
        await r.referrers("app", subject)
        await r.referrers("app", subject)
    assert (fast.calls["referrers"], slow.calls["referrers"]) == (2, 1)


async def test_an_expired_answer_is_served_stale_when_the_connector_fails() -> None:
    clock = Clock()
    image = random_image(seed=17)
    sbom = artifact(image.manifest, SBOM, seed=18)
    upstream = ApiUpstream("api")
    upstream.add("app", sbom)
    policy = CachingPolicy(referrers_ttl=10.0, stale_if_error=100.0)
    async with resolver(upstream, clock=clock, policy=policy) as r:
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        upstream.faults.fail = True
        clock.now += 50.0
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        assert r.stats.stale_serves == 1
        assert r.stats.upstream_errors["api"] == 1
        clock.now += 100.0  # past ttl + stale_if_error: too old to serve
        with pytest.raises(UpstreamError) as caught:
            await r.referrers("app", image.manifest.digest)
        assert caught.value.connector == "api"
        # Recovered: asked again, answer refreshed, nothing remembered as "none".
        upstream.faults.fail = False
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
    assert upstream.calls["referrers"] == 4


async def test_a_failure_is_never_remembered_as_no_referrers() -> None:
    image = random_image(seed=19)
    local = artifact(image.manifest, SIG, seed=20)
    upstream = FakeUpstream("hub")
    upstream.faults.rate_limited = 5.0
    async with resolver(upstream) as r:
        # Nothing found and the connector could not be asked: its error.
        with pytest.raises(TooManyRequests):
            await r.referrers("app", image.manifest.digest)
        # Something found locally: served, the failure logged and counted.
        await push(r, "app", local)
        assert await r.referrers("app", image.manifest.digest) == [local.manifest.referrer()]
        assert r.stats.upstream_errors["hub"] == 2


async def test_concurrent_requests_share_one_upstream_request() -> None:
    upstream = ApiUpstream("api")
    subject = random_image(seed=21).manifest.digest
    results: list[list[Descriptor]] = []
    async with resolver(upstream) as r, anyio.create_task_group() as tg:
        for _ in range(8):

            async def one() -> None:
                results.append(await r.referrers("app", subject))

            tg.start_soon(one)
    assert results == [[]] * 8
    assert upstream.calls == {"referrers": 1}


# -- the tag schema and chains --------------------------------------------------------


async def test_an_upstream_without_the_api_is_asked_for_the_tag_schema() -> None:
    image = random_image(seed=22)
    sbom = artifact(image.manifest, SBOM, seed=23)
    upstream = ApiUpstream("old", has_api=False)
    put_tag_schema(upstream, "app", image.manifest, sbom)
    async with resolver(upstream) as r:
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
    assert upstream.calls == {"referrers": 1, "get_manifest": 1}


async def test_a_tag_that_is_not_an_index_lists_nothing() -> None:
    image = random_image(seed=24)
    upstream = FakeUpstream("hub")
    upstream.add("app", random_image(seed=25), tag=schema_tag(image.manifest.digest))
    async with resolver(upstream) as r:
        assert await r.referrers("app", image.manifest.digest) == []


async def test_through_a_registry_connector_the_inner_api_is_used() -> None:
    image = random_image(seed=26)
    sbom = artifact(image.manifest, SBOM, seed=27)
    async with resolver() as inner:
        await push(inner, "app", sbom)
        async with resolver(RegistryConnector(inner, name="inner")) as outer:
            assert await outer.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
            assert outer.stats.requests_to("inner") == 1
            assert outer.stats.requests_to("inner", "referrers") == 1


async def test_through_a_registry_connector_without_the_api_the_tag_schema_is_used() -> None:
    image = random_image(seed=28)
    sbom = artifact(image.manifest, SBOM, seed=29)
    index = tag_schema_index(sbom.manifest)
    async with resolver() as inner:
        await push(inner, "app", sbom)
        await inner.push_manifest(
            "app", index.data, media_type=index.media_type, tag=schema_tag(image.manifest.digest)
        )
        connector = RegistryConnector(WithoutReferrers(inner), name="inner")  # type: ignore[arg-type]
        assert await connector.referrers("app", image.manifest.digest) is None
        async with resolver(connector) as outer:
            assert await outer.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
            assert outer.stats.requests_to("inner", "referrers") == 1
            assert outer.stats.requests_to("inner", "get_manifest") == 1


async def test_a_loop_of_registry_connectors_is_refused_not_followed() -> None:
    image = random_image(seed=30)
    sbom = artifact(image.manifest, SBOM, seed=31)
    a, b = resolver(), resolver()
    a.connectors.append(RegistryConnector(b, name="b"))
    b.connectors.append(RegistryConnector(a, name="a"))
    async with a, b:
        await push(b, "app", sbom)
        assert await a.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        assert await b.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
    assert a.stats.cycles_refused + b.stats.cycles_refused >= 1


async def test_a_connector_that_returns_junk_is_a_failure_not_a_crash() -> None:
    class Junk(FakeUpstream):
        async def referrers(self, repository: str, digest: object, **kw: object) -> object:
            return {"not": "a list"}

    subject = random_image(seed=32).manifest.digest
    async with resolver(Junk("junk")) as r:
        with pytest.raises(UpstreamError, match="junk"):
            await r.referrers("app", subject)
        assert r.stats.upstream_errors["junk"] == 1


# -- bad input ----------------------------------------------------------------------


async def test_bad_input_is_refused_before_any_io() -> None:
    upstream = ApiUpstream("api")
    subject = random_image(seed=33).manifest.digest
    async with resolver(upstream) as r:
        with pytest.raises(DigestInvalid):
            await r.referrers("app", "sha256:nothex")
        with pytest.raises(NameInvalid):
            await r.referrers("App/Bad", subject)
        for bad in ("", 3, "a\nb"):
            with pytest.raises(InvalidInput):
                await r.referrers("app", subject, artifact_type=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            await r.check("app", str(subject), referrers="yes")  # type: ignore[arg-type]
    assert upstream.calls == {}
    with pytest.raises(DockerConnectError):
        await r.referrers("app", subject)


def test_eager_referrers_needs_eager() -> None:
    with pytest.raises(InvalidInput, match="eager=True"):
        CachingPolicy(eager_referrers=True)
    assert CachingPolicy(eager=True, eager_referrers=True).eager_referrers
    assert CachingPolicy().referrers_ttl == 300.0
    with pytest.raises(InvalidInput):
        CachingPolicy(referrers_ttl=-1)


async def test_filesystem_referrers_survive_a_restart(tmp_path: Path) -> None:
    image = random_image(seed=34)
    sbom = artifact(image.manifest, SBOM, seed=35)

    def on_disk() -> Resolver:
        return Resolver(
            "local",
            manifests=FilesystemManifestStore(tmp_path / "manifests"),
            blobs=FilesystemBlobStore(tmp_path / "blobs"),
        )

    async with on_disk() as r:
        await push(r, "app", sbom)
    async with on_disk() as r:
        assert await r.referrers("app", image.manifest.digest) == [sbom.manifest.referrer()]
        await r.delete_manifest("app", str(sbom.manifest.digest))
    async with on_disk() as r:
        assert await r.referrers("app", image.manifest.digest) == []


async def test_a_connector_that_is_down_is_not_asked_and_its_answer_is_served_stale() -> None:
    clock = Clock()
    image = random_image(seed=36)
    sig = artifact(image.manifest, SIG, seed=37)
    upstream = ApiUpstream("api")
    upstream.add("app", sig)
    policy = CachingPolicy(referrers_ttl=1.0)
    health = HealthPolicy(failures=1, open_for=60.0)
    async with resolver(upstream, clock=clock, policy=policy, health=health) as r:
        assert await r.referrers("app", image.manifest.digest) == [sig.manifest.referrer()]
        upstream.faults.fail = True
        clock.now += 2.0
        assert await r.referrers("app", image.manifest.digest) == [sig.manifest.referrer()]
        assert r.health["api"].state == "down"
        clock.now += 2.0
        assert await r.referrers("app", image.manifest.digest) == [sig.manifest.referrer()]
        assert r.stats.stale_serves == 2
        assert r.stats.health_skips["api"] == 1
    # The second stale serve cost no request: the connector was down.
    assert upstream.calls["referrers"] == 2
