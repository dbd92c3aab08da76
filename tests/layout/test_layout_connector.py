"""OciLayoutConnector: the conformance suite, the ref.name mapping, changes, malformed layouts."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from _layouts import entry, write_blob, write_content, write_index, write_layout

from dockerconnect import (
    Digest,
    MemoryBlobStore,
    MemoryManifestStore,
    OciLayoutConnector,
    Resolver,
)
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import (
    BlobUnknown,
    DigestMismatch,
    NameInvalid,
    RangeInvalid,
    UpstreamDigestMismatch,
    UpstreamError,
)
from dockerconnect.layout import LayoutInvalid, split_ref_name
from dockerconnect.layout import _connector as connector_module
from dockerconnect.testing import (
    ConnectorConformance,
    ConnectorFactory,
    RandomImage,
    RandomIndex,
    random_image,
    random_index,
)

pytestmark = pytest.mark.anyio

ARTIFACT = "application/vnd.example.signature"


class TestQualifiedNames(ConnectorConformance):
    """A layout whose entries are named ``repo:tag`` (containerd, nerdctl)."""

    @pytest.fixture
    def connector_factory(self, tmp_path: Path) -> ConnectorFactory:
        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> OciLayoutConnector:
            named = {f"registry.example:5000/{repository}:{t}": c for t, c in images.items()}
            return OciLayoutConnector(write_layout(tmp_path / "layout", named))

        return make


class TestBareTags(ConnectorConformance):
    """A layout whose entries are bare tags (skopeo, oras), for one configured repository."""

    @pytest.fixture
    def connector_factory(self, tmp_path: Path) -> ConnectorFactory:
        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> OciLayoutConnector:
            layout = write_layout(tmp_path / "layout", dict(images))
            return OciLayoutConnector(layout, repository=repository, include=[repository])

        return make


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("v1", (None, "v1")),
        ("1.0", (None, "1.0")),
        ("repo:v1", ("repo", "v1")),
        ("team/repo:v1", ("team/repo", "v1")),
        ("docker.io/library/nginx:latest", ("library/nginx", "latest")),
        ("localhost:5000/foo:v2", ("foo", "v2")),
        ("localhost/foo:v2", ("foo", "v2")),
        ("localhost:5000/foo", None),
        ("repo@sha256:" + "a" * 64, None),
        ("1.0+build", None),
        (":v1", None),
        ("Repo:v1", None),
        ("-bad", None),
    ],
)
def test_ref_name_mapping(value: str, expected: tuple[str | None, str] | None) -> None:
    assert split_ref_name(value) == expected


async def test_bare_tags_serve_every_repository(tmp_path: Path) -> None:
    image = random_image(seed=1)
    other = random_image(seed=2)
    layout = write_layout(tmp_path / "l", {"v1": image, "team/app:v2": other})
    connector = OciLayoutConnector(layout)
    for repository in ("a", "b/c"):
        found = await connector.get_manifest(repository, "v1")
        assert found is not None
        assert found.digest == image.manifest.digest
        assert await connector.get_manifest(repository, "v2") is None
        assert await connector.tags(repository) == ["v1"]
    assert await connector.tags("team/app") == ["v1", "v2"]
    # Bare tags belong to every name: the connector cannot list repositories.
    assert await connector.repositories() is None

    pinned = OciLayoutConnector(layout, repository="mine")
    assert await pinned.get_manifest("a", "v1") is None
    assert (await pinned.head_manifest("mine", "v1")) == image.manifest.descriptor()
    assert await pinned.tags("team/app") == ["v2"]
    assert await pinned.repositories() == ["mine", "team/app"]


async def test_a_change_is_seen_on_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses = 0
    real = connector_module.parse_index

    def counting(data: bytes, where: str):  # type: ignore[no-untyped-def]
        nonlocal parses
        parses += 1
        return real(data, where)

    monkeypatch.setattr(connector_module, "parse_index", counting)
    first, second = random_image(seed=3), random_image(seed=4)
    layout = write_layout(tmp_path / "l", {"v1": first})
    connector = OciLayoutConnector(layout)
    assert await connector.tags("r") == ["v1"]
    assert await connector.get_manifest("r", "v2") is None
    assert parses == 1  # unchanged index.json: not read again

    # A new image copied in, as skopeo does: blobs first, then a new index.json.
    write_content(layout, second)
    write_index(layout, [entry(first.manifest, "v1"), entry(second.manifest, "v2")])
    found = await connector.get_manifest("r", "v2")
    assert found is not None
    assert found.digest == second.manifest.digest
    assert await connector.tags("r") == ["v1", "v2"]
    assert parses == 2


async def test_blobs_stream_in_chunks_from_an_offset(tmp_path: Path) -> None:
    image = random_image(layers=1, layer_size=3 * CHUNK_SIZE + 5, seed=5, layer_format="raw")
    connector = OciLayoutConnector(write_layout(tmp_path / "l", {"v1": image}))
    (layer,) = image.manifest.layers
    data = image.blobs[layer.digest]
    stream = await connector.open_blob("r", layer.digest, offset=CHUNK_SIZE // 2)
    assert stream is not None
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert all(len(c) <= CHUNK_SIZE for c in chunks)
    assert len(chunks) >= 3
    assert b"".join(chunks) == data[CHUNK_SIZE // 2 :]
    assert stream.size == len(data)
    with pytest.raises(RangeInvalid):
        await connector.open_blob("r", layer.digest, offset=len(data) + 1)


async def test_through_a_resolver_digests_are_identical(tmp_path: Path) -> None:
    index = random_index(seed=6, layer_size=50_000)
    connector = OciLayoutConnector(write_layout(tmp_path / "l", {"multi": index}))
    blobs = MemoryBlobStore()
    async with Resolver(
        "mirror", manifests=MemoryManifestStore(), blobs=blobs, connectors=[connector]
    ) as registry:
        top = await registry.get_manifest("app", "multi")
        assert top.data == index.manifest.data
        for child in index.children:
            manifest = await registry.get_manifest("app", str(child.manifest.digest))
            assert manifest.data == child.manifest.data
            for digest, data in child.blobs.items():
                async with await registry.open_blob("app", digest) as stream:
                    assert stream.source == connector.name
                    assert await stream.read() == data
        await registry.wait_idle()
        for digest in index.blobs:
            assert await blobs.stat(digest) is not None


async def test_wrong_bytes_are_never_cached(tmp_path: Path) -> None:
    image = random_image(layers=1, layer_size=40_000, seed=7)
    layout = write_layout(tmp_path / "l", {"v1": image})
    (layer,) = image.manifest.layers
    path = layout / "blobs" / "sha256" / layer.digest.hex
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes: only the digest can tell
    path.write_bytes(bytes(data))
    blobs = MemoryBlobStore()
    connector = OciLayoutConnector(layout)
    async with Resolver(
        "mirror", manifests=MemoryManifestStore(), blobs=blobs, connectors=[connector]
    ) as registry:
        await registry.get_manifest("r", "v1")
        with pytest.raises((DigestMismatch, UpstreamError, BlobUnknown)):
            async with await registry.open_blob("r", layer.digest) as stream:
                await stream.read()
        await registry.wait_idle()
    assert await blobs.stat(layer.digest) is None


async def test_no_oci_layout_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "l", {"v1": random_image(seed=8)})
    (layout / "oci-layout").unlink()
    connector = OciLayoutConnector(layout, name="carried")
    with pytest.raises(LayoutInvalid, match="no oci-layout file") as caught:
        await connector.get_manifest("r", "v1")
    assert isinstance(caught.value, UpstreamError)
    assert caught.value.connector == "carried"
    with pytest.raises(LayoutInvalid, match="does not exist"):
        await OciLayoutConnector(tmp_path / "nowhere").tags("r")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"schemaVersion": 2, "manifests": [], "manifests": []}', "duplicate key"),
        ('{"schemaVersion": 1, "manifests": []}', "schemaVersion"),
        ('{"schemaVersion": 2}', "'manifests' list"),
        ('{"schemaVersion": 2, "manifests": [{"mediaType": "x"}]}', r"manifests\[0\]"),
        ("[" * 100 + "]" * 100, "nested deeper"),
    ],
)
async def test_bad_index_json(tmp_path: Path, text: str, reason: str) -> None:
    layout = write_layout(tmp_path / "l", {"v1": random_image(seed=9)})
    (layout / "index.json").write_text(text)
    with pytest.raises(LayoutInvalid, match=reason):
        await OciLayoutConnector(layout).get_manifest("r", "v1")


async def test_bad_oci_layout_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "l", {"v1": random_image(seed=10)})
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutInvalid, match="unsupported imageLayoutVersion"):
        await OciLayoutConnector(layout).tags("r")


async def test_missing_and_wrong_size_blobs(tmp_path: Path) -> None:
    image = random_image(layers=2, layer_size=10_000, seed=11)
    layout = write_layout(tmp_path / "l", {"v1": image, "v2": random_image(seed=12)})
    connector = OciLayoutConnector(layout)
    # The manifest index.json names is missing.
    v2 = json.loads((layout / "index.json").read_text())["manifests"][1]["digest"]
    (layout / "blobs" / "sha256" / Digest.parse(v2).hex).unlink()
    with pytest.raises(LayoutInvalid, match="missing"):
        await connector.get_manifest("r", "v2")
    with pytest.raises(LayoutInvalid, match="missing"):
        await connector.head_manifest("r", "v2")

    # Once the manifest is served, its blobs are checked against it.
    assert await connector.get_manifest("r", "v1") is not None
    first, second = image.manifest.layers
    (layout / "blobs" / "sha256" / first.digest.hex).unlink()
    with pytest.raises(LayoutInvalid, match="missing"):
        await connector.stat_blob("r", first.digest)
    with pytest.raises(LayoutInvalid, match="missing"):
        await connector.open_blob("r", first.digest)
    (layout / "blobs" / "sha256" / second.digest.hex).write_bytes(b"short")
    with pytest.raises(LayoutInvalid, match="5 bytes"):
        await connector.stat_blob("r", second.digest)
    with pytest.raises(LayoutInvalid, match="5 bytes"):
        await connector.open_blob("r", second.digest)


async def test_manifest_of_wrong_size_or_bytes(tmp_path: Path) -> None:
    image = random_image(seed=13)
    layout = write_layout(tmp_path / "l", {"v1": image})
    path = layout / "blobs" / "sha256" / image.manifest.digest.hex
    path.write_bytes(image.manifest.data + b" ")
    connector = OciLayoutConnector(layout)
    with pytest.raises(LayoutInvalid, match="the layout says"):
        await connector.get_manifest("r", "v1")
    swapped = bytearray(image.manifest.data)
    swapped[-2:] = b"}\n" if swapped[-1:] != b"\n" else b" \n"
    path.write_bytes(bytes(swapped))
    with pytest.raises(UpstreamDigestMismatch):
        await connector.get_manifest("r", "v1")


async def test_paths_never_leave_the_layout(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the layout")
    digest = Digest.from_bytes(secret.read_bytes())
    layout = write_layout(tmp_path / "l", {"v1": random_image(seed=14)})
    os.symlink(secret, layout / "blobs" / "sha256" / digest.hex)
    connector = OciLayoutConnector(layout)
    with pytest.raises(LayoutInvalid, match="outside the layout"):
        await connector.open_blob("r", digest)
    with pytest.raises(LayoutInvalid, match="outside the layout"):
        await connector.stat_blob("r", digest)
    with pytest.raises(NameInvalid):
        await connector.stat_blob("../..", digest)


async def test_a_blob_that_is_not_a_manifest_is_no_manifest(tmp_path: Path) -> None:
    image = random_image(seed=15)
    connector = OciLayoutConnector(write_layout(tmp_path / "l", {"v1": image}))
    (layer, _) = image.manifest.layers
    assert await connector.get_manifest("r", str(layer.digest)) is None
    assert await connector.head_manifest("r", str(image.manifest.digest)) is not None


async def test_referrers_by_subject_and_by_tag_schema(tmp_path: Path) -> None:
    image = random_image(seed=16)
    subject = image.manifest.descriptor()
    signature = random_image(seed=17, layers=1, subject=subject)
    sbom = random_image(seed=18, layers=1, subject=subject)
    layout = write_layout(tmp_path / "l", {"v1": image}, extra=[signature.manifest])
    write_content(layout, signature)
    write_content(layout, sbom)
    # sbom is reachable only through the tag schema index.
    schema_doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**sbom.manifest.descriptor().to_dict(), "artifactType": ARTIFACT}],
    }
    schema = json.dumps(schema_doc).encode()
    schema_digest = write_blob(layout, schema)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": str(schema_digest),
            "size": len(schema),
            "annotations": {"org.opencontainers.image.ref.name": f"sha256-{subject.digest.hex}"},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))

    connector = OciLayoutConnector(layout)
    found = await connector.referrers("r", subject.digest)
    assert found is not None
    assert [r.digest for r in found] == [sbom.manifest.digest, signature.manifest.digest]
    by_subject = found[1]
    assert by_subject.artifact_type == "application/vnd.oci.image.config.v1+json"
    assert by_subject.size == signature.manifest.size
    only = await connector.referrers("r", subject.digest, artifact_type=ARTIFACT)
    assert [r.digest for r in only or []] == [sbom.manifest.digest]
    assert await connector.referrers("r", signature.manifest.digest) == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
async def test_no_file_stays_open(tmp_path: Path) -> None:
    image = random_image(layers=1, layer_size=3 * CHUNK_SIZE, seed=19, layer_format="raw")
    connector = OciLayoutConnector(write_layout(tmp_path / "l", {"v1": image}))
    (layer,) = image.manifest.layers
    await connector.get_manifest("r", "v1")
    before = _open_fds()
    unread = await connector.open_blob("r", layer.digest)
    assert unread is not None
    await unread.aclose()
    partly = await connector.open_blob("r", layer.digest, offset=5)
    assert partly is not None
    async with partly:
        async for _ in partly:
            break
    whole = await connector.open_blob("r", layer.digest)
    assert whole is not None
    await whole.read()
    await connector.stat_blob("r", layer.digest)
    with pytest.raises(RangeInvalid):
        await connector.open_blob("r", layer.digest, offset=3 * CHUNK_SIZE + 1)
    assert _open_fds() == before
