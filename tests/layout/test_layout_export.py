"""export_layout: a valid layout, platforms, referrers, hard links, resume, interruption."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _layouts import blob_files, check_layout

from dockerconnect import (
    OCI_INDEX,
    Descriptor,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    MemoryBlobStore,
    MemoryManifestStore,
    OciLayoutConnector,
    Resolver,
    export_layout,
)
from dockerconnect._manifest import Manifest
from dockerconnect.errors import (
    DigestMismatch,
    ManifestUnknown,
    StorageError,
    TagInvalid,
    UpstreamError,
)
from dockerconnect.layout import REF_NAME, ExportEvent
from dockerconnect.testing import (
    CountingConnector,
    FakeUpstream,
    RandomImage,
    random_image,
    random_index,
)

pytestmark = pytest.mark.anyio

REPO = "team/app"


@pytest.fixture
def hub() -> FakeUpstream:
    return FakeUpstream("hub")


@pytest.fixture
async def memory(hub: FakeUpstream) -> AsyncIterator[tuple[Resolver, CountingConnector]]:
    counting = CountingConnector(hub)
    async with Resolver(
        "staging", manifests=MemoryManifestStore(), blobs=MemoryBlobStore(), connectors=[counting]
    ) as registry:
        yield registry, counting


def tag_schema_index(*referrers: RandomImage) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [r.manifest.descriptor().to_dict() for r in referrers],
    }
    return Manifest.parse(json.dumps(doc).encode(), OCI_INDEX)


async def read_back(layout: Path, repository: str, reference: str) -> dict[Digest, bytes]:
    """Every manifest and blob reachable from ``reference``, read through the connector."""
    connector = OciLayoutConnector(layout)
    top = await connector.get_manifest(repository, reference)
    assert top is not None
    out: dict[Digest, bytes] = {top.digest: top.data}
    pending = [top]
    while pending:
        manifest = pending.pop()
        for child in manifest.manifests:
            found = await connector.get_manifest(repository, str(child.digest))
            if found is not None:
                out[found.digest] = found.data
                pending.append(found)
        for blob in manifest.blobs():
            stream = await connector.open_blob(repository, blob.digest)
            assert stream is not None
            out[blob.digest] = await stream.read()
    return out


async def test_an_image_and_an_index_round_trip(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    image = random_image(seed=1, layer_size=20_000)
    index = random_index(seed=2, platforms=("linux/amd64", "linux/arm64/v8"))
    hub.add(REPO, image, tag="v1")
    hub.add(REPO, index, tag="multi")
    events: list[ExportEvent] = []
    report = await export_layout(
        registry, REPO, ["v1", "multi"], tmp_path / "out", progress=events.append
    )

    layout = check_layout(tmp_path / "out")
    names = {e["annotations"][REF_NAME]: e["digest"] for e in layout["manifests"]}
    assert names == {"v1": str(image.manifest.digest), "multi": str(index.manifest.digest)}
    for content, tag in ((image, "v1"), (index, "multi")):
        expected = {**{d: m.data for d, m in content.manifests.items()}, **content.blobs}
        assert await read_back(tmp_path / "out", REPO, tag) == expected

    blobs = {**image.blobs, **index.blobs}
    assert (report.copied, report.linked, report.skipped) == (len(blobs), 0, 0)
    assert report.manifests == 1 + 1 + len(index.children)
    assert events[0].kind == "planned"
    assert events[0].total_blobs == len(blobs)
    assert events[0].total_bytes == sum(len(b) for b in blobs.values())
    assert events[-1].kind == "done"
    assert events[-1].done_bytes == events[0].total_bytes
    done = [e for e in events if e.kind == "blob"]
    assert {e.digest for e in done} == set(blobs)
    assert sum(e.size for e in events if e.kind == "bytes") == events[0].total_bytes
    assert not (tmp_path / "out" / ".dockerconnect-tmp").exists()


async def test_only_the_platforms_asked_for(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, counting = memory
    index = random_index(seed=3, platforms=("linux/amd64", "linux/arm64/v8", "linux/s390x"))
    hub.add(REPO, index, tag="multi")
    await export_layout(registry, REPO, ["multi"], tmp_path / "out", platforms=["linux/arm64"])
    check_layout(tmp_path / "out", partial=True)
    arm = next(c for c in index.children if str(c.platform) == "linux/arm64/v8")
    files = blob_files(tmp_path / "out")
    manifests = {index.manifest.digest.hex, arm.manifest.digest.hex}
    assert files == {d.hex for d in arm.blobs} | manifests
    assert set(counting.opened) == set(arm.blobs)


async def test_referrers_by_tag_schema_and_by_api(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    image = random_image(seed=4)
    subject = image.manifest.descriptor()
    signature = random_image(seed=5, layers=1, subject=subject)
    sbom = random_image(seed=6, layers=1, subject=subject)
    hub.add(REPO, image, tag="v1")
    hub.add(REPO, signature)
    hub.add(REPO, sbom)
    hub.add(REPO, tag_schema_index(signature), tag=f"sha256-{subject.digest.hex}")

    class WithReferrersApi:
        """The registry, plus a referrers API that knows only the SBOM."""

        def __getattr__(self, name: str) -> Any:
            return getattr(registry, name)

        async def referrers(self, repository: str, digest: Digest) -> list[Descriptor]:
            return [sbom.manifest.descriptor()] if digest == subject.digest else []

    plain = await export_layout(registry, REPO, ["v1"], tmp_path / "plain")
    assert [e.digest for e in plain.entries] == [image.manifest.digest]

    report = await export_layout(
        WithReferrersApi(),  # type: ignore[arg-type]
        REPO,
        ["v1"],
        tmp_path / "out",
        referrers=True,
    )
    check_layout(tmp_path / "out")
    assert [e.digest for e in report.entries] == [
        image.manifest.digest,
        sbom.manifest.digest,
        signature.manifest.digest,
    ]
    found = await OciLayoutConnector(tmp_path / "out").referrers(REPO, subject.digest)
    assert {r.digest for r in found or []} == {sbom.manifest.digest, signature.manifest.digest}
    for referrer in (signature, sbom):
        for digest in referrer.blobs:
            assert (tmp_path / "out" / "blobs" / "sha256" / digest.hex).exists()


async def test_hard_links_from_a_filesystem_store(tmp_path: Path, hub: FakeUpstream) -> None:
    image = random_image(seed=7, layers=3, layer_size=100_000)
    hub.add(REPO, image, tag="v1")
    store = FilesystemBlobStore(tmp_path / "store")
    async with Resolver(
        "staging",
        manifests=FilesystemManifestStore(tmp_path / "store"),
        blobs=store,
        connectors=[hub],
    ) as registry:
        for digest in image.blobs:  # cache every blob first
            async with await registry.open_blob(REPO, digest) as stream:
                await stream.read()
        await registry.wait_idle()
        report = await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    check_layout(tmp_path / "out")
    assert (report.copied, report.linked) == (0, len(image.blobs))
    assert report.bytes_linked == sum(len(b) for b in image.blobs.values())
    assert report.bytes_written < 10_000  # manifests and index.json only
    for digest in image.blobs:
        exported = tmp_path / "out" / "blobs" / "sha256" / digest.hex
        assert exported.stat().st_ino == store.blob_path(digest).stat().st_ino


async def test_a_rerun_skips_what_is_there_and_repairs_what_is_not(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, counting = memory
    image = random_image(seed=8, layers=3, layer_size=30_000)
    hub.add(REPO, image, tag="v1")
    await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    counting.reset()
    again = await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    assert (again.copied, again.skipped) == (0, len(image.blobs))
    assert counting.opened == {}

    damaged, *_ = image.manifest.layers
    path = tmp_path / "out" / "blobs" / "sha256" / damaged.digest.hex
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    repaired = await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    assert (repaired.copied, repaired.skipped) == (1, len(image.blobs) - 1)
    check_layout(tmp_path / "out")


async def test_index_json_keeps_other_entries(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    first, second, third = (random_image(seed=s) for s in (9, 10, 11))
    hub.add(REPO, first, tag="a")
    hub.add(REPO, second, tag="b")
    await export_layout(registry, REPO, ["a", "b", "a"], tmp_path / "out")
    hub.add(REPO, third, tag="b")  # b moved upstream
    await registry.delete_manifest(REPO, "b")  # forget the cached tag
    await export_layout(registry, REPO, ["b", str(first.manifest.digest)], tmp_path / "out")
    index = check_layout(tmp_path / "out")
    entries = [(e["digest"], e.get("annotations", {}).get(REF_NAME)) for e in index["manifests"]]
    assert entries == [
        (str(first.manifest.digest), "a"),
        (str(third.manifest.digest), "b"),
        (str(first.manifest.digest), None),
    ]


async def test_qualified_names(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    image = random_image(seed=12)
    hub.add(REPO, image, tag="v1")
    await export_layout(registry, REPO, "v1", tmp_path / "out", qualified=True)
    index = check_layout(tmp_path / "out")
    assert index["manifests"][0]["annotations"][REF_NAME] == f"{REPO}:v1"
    connector = OciLayoutConnector(tmp_path / "out")
    assert await connector.tags(REPO) == ["v1"]
    assert await connector.get_manifest("other", "v1") is None


async def test_an_interrupted_export_leaves_a_valid_layout_and_resumes(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, counting = memory
    old = random_image(seed=13)
    image = random_image(seed=14, layers=8, layer_size=200_000, layer_format="raw")
    hub.add(REPO, old, tag="old")
    hub.add(REPO, image, tag="v1")
    await export_layout(registry, REPO, ["old"], tmp_path / "out")
    before = (tmp_path / "out" / "index.json").read_bytes()

    placed = 0
    with anyio.CancelScope() as scope:

        def stop_after_three(event: ExportEvent) -> None:
            nonlocal placed
            if event.kind == "blob":
                placed += 1
                if placed == 3:
                    scope.cancel()

        await export_layout(registry, REPO, ["v1"], tmp_path / "out", progress=stop_after_three)
    assert scope.cancelled_caught
    # Valid, and index.json is the one before: it names only what is whole.
    check_layout(tmp_path / "out")
    assert (tmp_path / "out" / "index.json").read_bytes() == before
    present = blob_files(tmp_path / "out") & {d.hex for d in image.blobs}
    assert 3 <= len(present) < len(image.blobs)
    assert not list((tmp_path / "out" / ".dockerconnect-tmp").glob("*"))

    counting.reset()
    report = await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    assert report.skipped == len(present)
    assert report.copied == len(image.blobs) - len(present)
    # Nothing already in the layout is fetched again (what the staging registry
    # cached during the interrupted run is not fetched upstream either).
    missing = set(image.blobs) - {Digest.parse(f"sha256:{h}") for h in present}
    assert set(counting.opened) <= missing
    index = check_layout(tmp_path / "out")
    assert [e["annotations"][REF_NAME] for e in index["manifests"]] == ["old", "v1"]


async def test_bad_bytes_are_never_published(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    image = random_image(seed=15, layer_size=50_000)
    hub.add(REPO, image, tag="v1")
    hub.faults.corrupt_blobs = True
    with pytest.raises((DigestMismatch, UpstreamError)):
        await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    assert blob_files(tmp_path / "out") == set()
    assert not (tmp_path / "out" / "index.json").exists()
    assert not list((tmp_path / "out" / ".dockerconnect-tmp").glob("*"))


async def test_refusals(
    tmp_path: Path, hub: FakeUpstream, memory: tuple[Resolver, CountingConnector]
) -> None:
    registry, _ = memory
    hub.add(REPO, random_image(seed=16), tag="v1")
    with pytest.raises(ManifestUnknown):
        await export_layout(registry, REPO, ["nope"], tmp_path / "a")
    assert not (tmp_path / "a").exists()  # nothing written before every manifest is known
    with pytest.raises(TagInvalid):
        await export_layout(registry, REPO, ["-bad"], tmp_path / "a")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="not empty and not an OCI image layout"):
        await export_layout(registry, REPO, ["v1"], tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]


async def test_a_copy_where_the_filesystem_refuses_links(
    tmp_path: Path, hub: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = random_image(seed=17, layers=2, layer_size=20_000)
    hub.add(REPO, image, tag="v1")

    def cross_device(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    async with Resolver(
        "staging",
        manifests=FilesystemManifestStore(tmp_path / "store"),
        blobs=FilesystemBlobStore(tmp_path / "store"),
        connectors=[hub],
    ) as registry:
        await export_layout(registry, REPO, ["v1"], tmp_path / "first")
        await registry.wait_idle()
        monkeypatch.setattr(os, "link", cross_device)
        report = await export_layout(registry, REPO, ["v1"], tmp_path / "out")
    assert (report.copied, report.linked) == (len(image.blobs), 0)
    check_layout(tmp_path / "out")
