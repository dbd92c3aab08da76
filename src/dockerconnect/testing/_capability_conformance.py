"""The conformance tests of the stores' optional capabilities.

Mixed into :class:`~dockerconnect.testing.BlobStoreConformance` (``UsageLog``)
and :class:`~dockerconnect.testing.ManifestStoreConformance`
(``ReferrersIndex``, ``ManifestUsageLog``): each test skips when the store
under test lacks the capability, and uses the suite's ``blob_store`` /
``manifest_store`` fixtures and their factories.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import OCI_MANIFEST
from dockerconnect._protocols import (
    BlobStore,
    CachedBlob,
    CachedManifest,
    ManifestStore,
    ManifestUsageLog,
    ReferrersIndex,
    UsageLog,
)
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import DigestInvalid, NameInvalid
from dockerconnect.testing._images import random_artifact, random_blob, random_image, random_index
from dockerconnect.testing._suite_support import (
    INVALID_DIGESTS,
    BlobStoreFactory,
    ManifestStoreFactory,
    make_store,
    put_blob,
    untyped,
)

__all__ = ["BlobUsageLogTests", "ManifestUsageLogTests", "ReferrersIndexTests"]


class BlobUsageLogTests:
    """:class:`~dockerconnect.UsageLog`, for blob stores that have it."""

    persistent: ClassVar[bool] = False

    @staticmethod
    def _usage_log(store: BlobStore) -> UsageLog:
        if not isinstance(store, UsageLog):
            pytest.skip("the store has no usage log (UsageLog)")
        return store

    @pytest.mark.anyio
    async def test_cached_blobs_are_listed_with_size_source_and_times(
        self, blob_store: BlobStore
    ) -> None:
        log = self._usage_log(blob_store)
        assert await log.cached() == []
        small, large = b"cached small", random_blob(CHUNK_SIZE + 5, 40)
        for data, at in ((small, 1000.0), (large, 1001.5)):
            descriptor = await put_blob(blob_store, data)
            await log.mark(descriptor.digest, source="hub", at=at)
        assert await log.cached() == [
            CachedBlob(Digest.from_bytes(small), len(small), "hub", 1000.0, 1000.0),
            CachedBlob(Digest.from_bytes(large), len(large), "hub", 1001.5, 1001.5),
        ]
        # Marking again keeps the first origin and time.
        await log.mark(Digest.from_bytes(small), source="other", at=1005.0)
        assert (await log.cached())[0].source == "hub"

    @pytest.mark.anyio
    async def test_pushed_and_unmarked_blobs_are_never_removed(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        pushed, cached_then_pushed, unmarked = b"pushed", b"cached, then pushed", b"no mark"
        # Pushed content is marked before its ingest; the mark is sticky.
        await log.mark(Digest.from_bytes(pushed), source=None, at=10.0)
        await put_blob(blob_store, pushed)
        await log.mark(Digest.from_bytes(pushed), source="hub", at=11.0)
        await put_blob(blob_store, cached_then_pushed)
        await log.mark(Digest.from_bytes(cached_then_pushed), source="hub", at=10.0)
        await log.mark(Digest.from_bytes(cached_then_pushed), source=None, at=12.0)
        await put_blob(blob_store, unmarked)
        assert await log.cached() == []
        for data in (pushed, cached_then_pushed, unmarked):
            digest = Digest.from_bytes(data)
            assert await log.remove_cached(digest, unused_since=math.inf) is False
            assert await blob_store.stat(digest) is not None

    @pytest.mark.anyio
    async def test_touch_orders_by_last_use_and_never_goes_back(
        self, blob_store: BlobStore
    ) -> None:
        log = self._usage_log(blob_store)
        first, second = b"first cached", b"second cached"
        for data in (first, second):
            await put_blob(blob_store, data)
            await log.mark(Digest.from_bytes(data), source="hub", at=100.0)
        log.touch(Digest.from_bytes(first), 150.0)
        log.touch(Digest.from_bytes(first), 120.0)  # older: ignored
        listed = await log.cached()
        assert [(b.digest, b.last_used) for b in listed] == [
            (Digest.from_bytes(second), 100.0),
            (Digest.from_bytes(first), 150.0),
        ]
        await log.flush()
        assert await log.cached() == listed
        await log.flush()  # nothing pending: a no-op
        assert await log.cached() == listed

    @pytest.mark.anyio
    async def test_remove_cached_only_when_unused_since(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = b"cached and idle"
        digest = (await put_blob(blob_store, data)).digest
        await log.mark(digest, source="hub", at=100.0)
        log.touch(digest, 200.0)
        assert await log.remove_cached(digest, unused_since=199.0) is False
        await log.flush()
        assert await log.remove_cached(digest, unused_since=199.0) is False
        assert await blob_store.stat(digest) is not None
        assert await log.remove_cached(digest, unused_since=200.0) is True
        assert await blob_store.stat(digest) is None
        assert await blob_store.open(digest) is None
        assert await log.cached() == []
        assert await log.remove_cached(digest, unused_since=math.inf) is False
        # Cached again later, it starts afresh.
        await put_blob(blob_store, data)
        await log.mark(digest, source="mirror", at=300.0)
        assert await log.cached() == [CachedBlob(digest, len(data), "mirror", 300.0, 300.0)]

    @pytest.mark.anyio
    async def test_remove_cached_refuses_during_an_ingest(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = random_blob(2 * CHUNK_SIZE, 41)
        digest = (await put_blob(blob_store, data)).digest
        await log.mark(digest, source="hub", at=1.0)
        async with blob_store.ingest(digest, len(data)) as writer:
            await writer.write(data[:CHUNK_SIZE])
            assert await log.remove_cached(digest, unused_since=math.inf) is False
            await writer.write(data[CHUNK_SIZE:])
            await writer.commit()
        assert await blob_store.stat(digest) is not None
        assert await log.remove_cached(digest, unused_since=math.inf) is True

    @pytest.mark.anyio
    async def test_open_stream_reads_a_removed_blob_to_its_end(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        data = random_blob(3 * CHUNK_SIZE + 11, 42)
        digest = (await put_blob(blob_store, data)).digest
        await log.mark(digest, source="hub", at=1.0)
        stream = await blob_store.open(digest)
        assert stream is not None
        async with stream:
            iterator = aiter(stream)
            first = await anext(iterator)
            assert await log.remove_cached(digest, unused_since=math.inf) is True
            rest = [chunk async for chunk in iterator]
        assert first + b"".join(rest) == data
        assert await blob_store.stat(digest) is None

    @pytest.mark.anyio
    async def test_delete_forgets_the_mark(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        digest = (await put_blob(blob_store, b"deleted outright")).digest
        await log.mark(digest, source="hub", at=1.0)
        assert await blob_store.delete(digest) is True
        assert await log.cached() == []
        await put_blob(blob_store, b"deleted outright")
        assert await log.cached() == []  # held again, but not known as a cache

    @pytest.mark.anyio
    async def test_usage_log_refuses_bad_input(self, blob_store: BlobStore) -> None:
        log = self._usage_log(blob_store)
        digest = Digest.from_bytes(b"x")
        for bad in INVALID_DIGESTS[:4]:
            with pytest.raises(DigestInvalid):
                await log.mark(untyped(bad), source="hub", at=1.0)
            with pytest.raises(DigestInvalid):
                log.touch(untyped(bad), 1.0)
            with pytest.raises(DigestInvalid):
                await log.remove_cached(untyped(bad), unused_since=1.0)
        for at in (math.nan, math.inf, "1", None):
            with pytest.raises(ValueError):
                await log.mark(digest, source="hub", at=untyped(at))
            with pytest.raises(ValueError):
                log.touch(digest, untyped(at))
        with pytest.raises(ValueError):
            await log.mark(digest, source="", at=1.0)
        assert await log.cached() == []

    @pytest.mark.anyio
    async def test_usage_survives_a_restart(
        self, blob_store: BlobStore, blob_store_factory: BlobStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        log = self._usage_log(blob_store)
        cached, pushed = b"cached before the restart", b"pushed before the restart"
        await log.mark(Digest.from_bytes(pushed), source=None, at=5.0)
        await put_blob(blob_store, pushed)
        await put_blob(blob_store, cached)
        await log.mark(Digest.from_bytes(cached), source="hub", at=5.0)
        log.touch(Digest.from_bytes(cached), 9.0)
        await log.flush()
        reopened = self._usage_log(await make_store(blob_store_factory))
        assert await reopened.cached() == [
            CachedBlob(Digest.from_bytes(cached), len(cached), "hub", 5.0, 9.0)
        ]
        assert await reopened.remove_cached(Digest.from_bytes(pushed), unused_since=99.0) is False
        assert await reopened.remove_cached(Digest.from_bytes(cached), unused_since=99.0) is True
        assert await blob_store.stat(Digest.from_bytes(cached)) is None


class ReferrersIndexTests:
    """:class:`~dockerconnect.ReferrersIndex`, for manifest stores that have it."""

    persistent: ClassVar[bool] = False

    @staticmethod
    def _referrers_index(store: ManifestStore) -> ReferrersIndex:
        if not isinstance(store, ReferrersIndex):
            pytest.skip("the store has no referrers index (ReferrersIndex)")
        return store

    @pytest.mark.anyio
    async def test_referrer_listed_at_once_without_its_subject(
        self, manifest_store: ManifestStore
    ) -> None:
        index = self._referrers_index(manifest_store)
        subject = random_image(seed=20).manifest
        sbom = random_artifact(subject, seed=21, annotations={"org.example.kind": "sbom"})
        assert await index.referrers("app", subject.digest) == []
        await manifest_store.put_manifest("app", sbom.manifest)
        found = await index.referrers("app", subject.digest)
        assert found == [sbom.manifest.referrer()]
        (entry,) = found
        assert (entry.media_type, entry.digest, entry.size) == (
            sbom.manifest.media_type,
            sbom.manifest.digest,
            len(sbom.manifest.data),
        )
        assert entry.artifact_type == "application/vnd.example.sbom+json"
        assert entry.annotations == {"org.example.kind": "sbom"}
        # The subject was never stored: the referrer is still a manifest here.
        assert await manifest_store.get_manifest("app", subject.digest) is None
        assert await manifest_store.get_manifest("app", sbom.manifest.digest) == sbom.manifest

    @pytest.mark.anyio
    async def test_referrers_by_subject_and_repository(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject, other = random_image(seed=22).manifest, random_index(seed=23).manifest
        signature = random_artifact(
            subject, seed=24, artifact_type=None, config_media_type="application/vnd.example.sig"
        )
        sboms = [random_artifact(subject, seed=25 + i) for i in range(3)]
        elsewhere = random_artifact(other, seed=30)
        for artifact in (*sboms, signature, elsewhere):
            await manifest_store.put_manifest("app", artifact.manifest)
        await manifest_store.put_manifest("app", sboms[0].manifest)  # idempotent
        await manifest_store.put_manifest("app", subject)
        await manifest_store.put_manifest("other", elsewhere.manifest)
        found = await index.referrers("app", subject.digest)
        expected = sorted(
            (a.manifest.referrer() for a in (*sboms, signature)), key=lambda d: str(d.digest)
        )
        assert found == expected
        assert signature.manifest.referrer() in found
        assert signature.manifest.referrer().artifact_type == "application/vnd.example.sig"
        assert await index.referrers("app", other.digest) == [elsewhere.manifest.referrer()]
        assert await index.referrers("other", other.digest) == [elsewhere.manifest.referrer()]
        assert await index.referrers("other", subject.digest) == []
        assert await index.referrers("nowhere", subject.digest) == []
        # A referrer is not a referrer of itself, nor is its subject of anything.
        assert await index.referrers("app", sboms[0].manifest.digest) == []

    @pytest.mark.anyio
    async def test_delete_removes_the_referrer(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject = random_image(seed=31).manifest
        first, second = random_artifact(subject, seed=32), random_artifact(subject, seed=33)
        await manifest_store.put_manifest("app", first.manifest)
        await manifest_store.put_manifest("app", second.manifest)
        await manifest_store.put_manifest("app", subject)
        assert await manifest_store.delete_manifest("app", first.manifest.digest) is True
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]
        # Deleting the subject leaves its referrers (as the distribution-spec allows).
        assert await manifest_store.delete_manifest("app", subject.digest) is True
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]
        assert await manifest_store.delete_manifest("app", second.manifest.digest) is True
        assert await index.referrers("app", subject.digest) == []
        assert await manifest_store.delete_manifest("app", second.manifest.digest) is False
        assert await manifest_store.repositories() == []
        await manifest_store.put_manifest("app", second.manifest)
        assert await index.referrers("app", subject.digest) == [second.manifest.referrer()]

    @pytest.mark.anyio
    async def test_referrers_of_a_sha512_subject(self, manifest_store: ManifestStore) -> None:
        index = self._referrers_index(manifest_store)
        subject = Descriptor(OCI_MANIFEST, Digest.from_bytes(b"elsewhere", "sha512"), 9)
        artifact = random_artifact(subject, seed=34)
        await manifest_store.put_manifest("app", artifact.manifest)
        assert await index.referrers("app", subject.digest) == [artifact.manifest.referrer()]
        assert await index.referrers("app", str(subject.digest)) == [  # type: ignore[arg-type]
            artifact.manifest.referrer()
        ]

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", ["", "Upper", "../x", "a//b"])
    async def test_referrers_invalid_repository(
        self, manifest_store: ManifestStore, bad: str
    ) -> None:
        index = self._referrers_index(manifest_store)
        with pytest.raises(NameInvalid):
            await index.referrers(bad, Digest.from_bytes(b"x"))

    @pytest.mark.anyio
    @pytest.mark.parametrize("bad", INVALID_DIGESTS)
    async def test_referrers_invalid_digest(self, manifest_store: ManifestStore, bad: str) -> None:
        index = self._referrers_index(manifest_store)
        with pytest.raises(DigestInvalid):
            await index.referrers("app", untyped(bad))
        assert await manifest_store.repositories() == []

    @pytest.mark.anyio
    async def test_referrers_survive_a_restart(
        self, manifest_store: ManifestStore, manifest_store_factory: ManifestStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        self._referrers_index(manifest_store)
        subject = random_image(seed=35).manifest
        kept, doomed = random_artifact(subject, seed=36), random_artifact(subject, seed=37)
        await manifest_store.put_manifest("a/b", kept.manifest)
        await manifest_store.put_manifest("a/b", doomed.manifest)
        store = await make_store(manifest_store_factory)
        assert store is not manifest_store
        reopened = self._referrers_index(store)
        expected = sorted(
            (kept.manifest.referrer(), doomed.manifest.referrer()), key=lambda d: str(d.digest)
        )
        assert await reopened.referrers("a/b", subject.digest) == expected
        assert await manifest_store.delete_manifest("a/b", doomed.manifest.digest) is True
        assert await reopened.referrers("a/b", subject.digest) == [kept.manifest.referrer()]


class ManifestUsageLogTests:
    """:class:`~dockerconnect.ManifestUsageLog`, for manifest stores that have it."""

    persistent: ClassVar[bool] = False

    @staticmethod
    def _usage_log(store: ManifestStore) -> ManifestUsageLog:
        if not isinstance(store, ManifestUsageLog):
            pytest.skip("the store has no manifest usage log (ManifestUsageLog)")
        return store

    @pytest.mark.anyio
    async def test_cached_manifests_listed_used_and_removed(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        assert await log.cached_manifests() == []
        old, recent = random_image(seed=50).manifest, random_index(seed=51).manifest
        for manifest, at in ((old, 100.0), (recent, 110.0)):
            await manifest_store.put_manifest("a/b", manifest)
            await log.mark_manifest("a/b", manifest.digest, source="hub", at=at)
        await log.mark_manifest("a/b", old.digest, source="other", at=120.0)  # first origin stays
        log.touch_manifest("a/b", recent.digest, 130.0)
        log.touch_manifest("a/b", recent.digest, 125.0)  # older: ignored
        expected = [
            CachedManifest("a/b", old.digest, old.size, "hub", 100.0, 100.0),
            CachedManifest("a/b", recent.digest, recent.size, "hub", 110.0, 130.0),
        ]
        assert await log.cached_manifests() == expected
        await log.flush()
        assert await log.cached_manifests() == expected
        assert await log.remove_cached_manifest("a/b", recent.digest, unused_since=129.0) is False
        assert await log.remove_cached_manifest("other", old.digest, unused_since=200.0) is False
        assert await log.remove_cached_manifest("a/b", old.digest, unused_since=100.0) is True
        assert await manifest_store.get_manifest("a/b", old.digest) is None
        assert await log.cached_manifests() == expected[1:]
        assert await log.remove_cached_manifest("a/b", old.digest, unused_since=math.inf) is False

    @pytest.mark.anyio
    async def test_pushed_and_unmarked_manifests_are_never_removed(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        pushed, upgraded, unmarked = (random_image(seed=52 + i).manifest for i in range(3))
        await log.mark_manifest("app", pushed.digest, source=None, at=1.0)
        await manifest_store.put_manifest("app", pushed)
        await log.mark_manifest("app", pushed.digest, source="hub", at=2.0)
        await manifest_store.put_manifest("app", upgraded)
        await log.mark_manifest("app", upgraded.digest, source="hub", at=1.0)
        await log.mark_manifest("app", upgraded.digest, source=None, at=3.0)
        await manifest_store.put_manifest("app", unmarked)
        assert await log.cached_manifests() == []
        for manifest in (pushed, upgraded, unmarked):
            removed = await log.remove_cached_manifest(
                "app", manifest.digest, unused_since=math.inf
            )
            assert removed is False
            assert await manifest_store.get_manifest("app", manifest.digest) == manifest

    @pytest.mark.anyio
    async def test_removing_a_cached_referrer_unindexes_it(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        subject = random_image(seed=55).manifest
        signature = random_artifact(subject, seed=56)
        await manifest_store.put_manifest("app", signature.manifest)
        await log.mark_manifest("app", signature.manifest.digest, source="hub", at=1.0)
        removed = await log.remove_cached_manifest(
            "app", signature.manifest.digest, unused_since=1.0
        )
        assert removed is True
        if isinstance(manifest_store, ReferrersIndex):
            assert await manifest_store.referrers("app", subject.digest) == []
        assert await manifest_store.repositories() == []

    @pytest.mark.anyio
    async def test_manifest_usage_log_refuses_bad_input(
        self, manifest_store: ManifestStore
    ) -> None:
        log = self._usage_log(manifest_store)
        digest = Digest.from_bytes(b"{}")
        with pytest.raises(NameInvalid):
            await log.mark_manifest("../x", digest, source="hub", at=1.0)
        with pytest.raises(NameInvalid):
            log.touch_manifest("Upper", digest, 1.0)
        with pytest.raises(DigestInvalid):
            await log.remove_cached_manifest("app", untyped("sha256:short"), unused_since=1.0)
        with pytest.raises(ValueError):
            await log.mark_manifest("app", digest, source="hub", at=untyped(math.nan))
        with pytest.raises(ValueError):
            await log.mark_manifest("app", digest, source="", at=1.0)
        assert await log.cached_manifests() == []

    @pytest.mark.anyio
    async def test_manifest_usage_survives_a_restart(
        self, manifest_store: ManifestStore, manifest_store_factory: ManifestStoreFactory
    ) -> None:
        if not self.persistent:
            pytest.skip("the store is not persistent")
        log = self._usage_log(manifest_store)
        manifest = random_image(seed=57).manifest
        await manifest_store.put_manifest("a/b", manifest)
        await log.mark_manifest("a/b", manifest.digest, source="hub", at=5.0)
        log.touch_manifest("a/b", manifest.digest, 9.0)
        await log.flush()
        reopened = self._usage_log(await make_store(manifest_store_factory))
        assert await reopened.cached_manifests() == [
            CachedManifest("a/b", manifest.digest, manifest.size, "hub", 5.0, 9.0)
        ]
