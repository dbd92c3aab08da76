"""Digest, Descriptor, Platform and Manifest: parsing, validation, round trips."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerconnect import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_ARTIFACT_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Annotations,
    Descriptor,
    Digest,
    DigestVerifier,
    Manifest,
    Platform,
)
from dockerconnect.errors import (
    DigestInvalid,
    DigestMismatch,
    InvalidInput,
    ManifestInvalid,
    SizeInvalid,
    Unsupported,
)
from dockerconnect.testing import random_image, random_index

SHA = "sha256:" + "a" * 64

# -- Digest -------------------------------------------------------------------


def test_digest_parse_and_str() -> None:
    d = Digest.parse(SHA)
    assert d.algorithm == "sha256" and d.hex == "a" * 64
    assert str(d) == SHA
    assert Digest.parse(d) is d
    assert hash(d) == hash(Digest.parse(SHA))


def test_digest_from_bytes() -> None:
    assert str(Digest.from_bytes(b"hi")) == "sha256:" + hashlib.sha256(b"hi").hexdigest()
    assert str(Digest.from_bytes(b"hi", "sha512")) == "sha512:" + hashlib.sha512(b"hi").hexdigest()
    with pytest.raises(Unsupported):
        Digest.from_bytes(b"hi", "md5")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha512:" + "a" * 64,
        "SHA256:" + "a" * 64,
        "sha256 :" + "a" * 64,
        "sha256:" + "a" * 63 + " ",
        "sha..256:abc",
        "sha256+:abc",
        "foo:a/b",
        "foo:../x",
        "foo:a b",
        "foo:a.b",
    ],
)
def test_digest_invalid(value: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


def test_unverifiable_algorithm_parses_but_cannot_verify() -> None:
    d = Digest.parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
    assert d.algorithm == "multihash+base58"
    assert not d.verifiable
    with pytest.raises(Unsupported):
        DigestVerifier(d)
    with pytest.raises(Unsupported):
        d.matches(b"x")


def test_verifier_checks_digest_and_size() -> None:
    data = b"hello world"
    v = DigestVerifier(Digest.from_bytes(data), len(data))
    v.update(data[:5])
    v.update(data[5:])
    v.verify()
    assert v.ok

    short = DigestVerifier(Digest.from_bytes(data), len(data))
    short.update(data[:5])
    with pytest.raises(SizeInvalid):
        short.verify()

    long = DigestVerifier(Digest.from_bytes(data), len(data))
    with pytest.raises(SizeInvalid):
        long.update(data + b"!")

    wrong = DigestVerifier(Digest.from_bytes(data))
    wrong.update(b"jello world")
    with pytest.raises(DigestMismatch):
        wrong.verify()
    assert not wrong.ok


@pytest.mark.anyio
async def test_verifier_threaded_update_matches() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: hashed in a worker thread
    v = DigestVerifier(Digest.from_bytes(data), len(data))
    await v.aupdate(data)
    v.verify()


@given(st.text())
def test_any_text_parses_as_digest_or_raises_invalid_input(value: str) -> None:
    try:
        d = Digest.parse(value)
    except InvalidInput:
        return
    assert Digest.parse(str(d)) == d
    assert "/" not in str(d) and ".." not in str(d)
    assert not any(c.isspace() for c in str(d))


@given(st.binary(), st.sampled_from(["sha256", "sha512"]))
def test_digest_round_trip(data: bytes, algorithm: str) -> None:
    d = Digest.from_bytes(data, algorithm)
    assert Digest.parse(str(d)) == d
    assert d.matches(data)


# -- Descriptor and Platform -------------------------------------------------


def test_descriptor_from_and_to_dict() -> None:
    raw = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": SHA,
        "size": 12,
        "urls": ["https://example.com/layer"],
        "annotations": {"a": "b"},
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        "artifactType": "application/x-thing",
    }
    d = Descriptor.from_dict(raw)
    assert d.digest == Digest.parse(SHA)
    assert d.platform == Platform("arm64", "linux", "v8")
    assert d.annotations == {"a": "b"}
    assert d.to_dict() == raw
    assert Descriptor.parse(d.to_json()) == d
    assert len({d, Descriptor.from_dict(raw)}) == 1  # hashable, annotations included


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"digest": SHA, "size": 1},
        {"mediaType": 3, "digest": SHA, "size": 1},
        {"mediaType": "a/b", "digest": "nope", "size": 1},
        {"mediaType": "a/b", "digest": SHA, "size": -1},
        {"mediaType": "a/b", "digest": SHA, "size": 1.5},
        {"mediaType": "a/b", "digest": SHA, "size": True},
        {"mediaType": "a/b", "digest": SHA, "size": "1"},
        {"mediaType": "a/b", "digest": SHA, "size": 1, "urls": "x"},
        {"mediaType": "a/b", "digest": SHA, "size": 1, "annotations": {"a": 1}},
        {"mediaType": "a/b", "digest": SHA, "size": 1, "platform": {"os": "linux"}},
        {"mediaType": "a/b", "digest": SHA, "size": 1, "artifactType": 5},
    ],
)
def test_descriptor_invalid(raw: Any) -> None:
    with pytest.raises(ManifestInvalid):
        Descriptor.from_dict(raw)


def test_descriptor_constructor_validates() -> None:
    with pytest.raises(InvalidInput):
        Descriptor("a/b", SHA, -1)
    with pytest.raises(DigestInvalid):
        Descriptor("a/b", "sha256:x", 1)
    d = Descriptor("a/b", SHA, 1, annotations={"k": "v"})
    assert isinstance(d.annotations, Annotations)
    hash(d)


descriptors = st.builds(
    Descriptor,
    st.sampled_from(["application/vnd.oci.image.layer.v1.tar", "application/octet-stream"]),
    st.binary().map(Digest.from_bytes),
    st.integers(min_value=0, max_value=2**53),
    urls=st.lists(st.text(max_size=10), max_size=2).map(tuple),
    annotations=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    platform=st.none()
    | st.builds(Platform, st.sampled_from(["amd64", "arm64"]), st.just("linux"), st.none()),
    artifact_type=st.none() | st.just("application/x-a"),
)


@given(descriptors)
def test_descriptor_round_trip(d: Descriptor) -> None:
    assert Descriptor.from_dict(d.to_dict()) == d
    assert Descriptor.parse(d.to_json()) == d


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/aarch64", "linux/arm64", True),
        ("linux/x86_64", "linux/amd64", True),
        ("linux/arm", "linux/arm/v7", True),
        ("linux/armhf", "linux/arm/v7", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/amd64", "windows/amd64", False),
        ("linux/amd64", "linux/arm64", False),
    ],
)
def test_platform_matching(a: str, b: str, same: bool) -> None:
    assert Platform.parse(a).matches(b) is same
    assert Platform.parse(b).matches(Platform.parse(a)) is same


def test_platform_parse_and_str() -> None:
    p = Platform.parse("linux/arm64/v8")
    assert (p.os, p.architecture, p.variant) == ("linux", "arm64", "v8")
    assert str(p) == "linux/arm64/v8"
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d", ""):
        with pytest.raises(InvalidInput):
            Platform.parse(bad)


# -- Manifest ----------------------------------------------------------------


def _doc(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": SHA, "size": 7}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": SHA, "size": 9}


def test_manifest_keeps_exact_bytes_and_digest() -> None:
    data = b'{ "schemaVersion":2, "mediaType":"%s",\n "config":%s, "layers":[%s] }' % (
        OCI_MANIFEST.encode(),
        json.dumps(CONFIG).encode(),
        json.dumps(LAYER).encode(),
    )
    m = Manifest.parse(data)
    assert m.data == data
    assert m.digest == Digest.from_bytes(data)
    assert m.media_type == OCI_MANIFEST
    assert m.config is not None and m.config.size == 7
    assert len(m.layers) == 1
    assert m.references() == (m.config, m.layers[0])
    assert m.descriptor() == Descriptor(OCI_MANIFEST, m.digest, len(data))


def test_every_supported_kind_parses() -> None:
    image = random_image(seed=1, media_type=DOCKER_MANIFEST)
    assert Manifest.parse(image.manifest.data).media_type == DOCKER_MANIFEST
    index = random_index(seed=2, media_type=DOCKER_MANIFEST_LIST)
    parsed = Manifest.parse(index.manifest.data, DOCKER_MANIFEST_LIST)
    assert parsed.is_index and len(parsed.manifests) == 2
    assert parsed.manifests[1].platform == Platform("arm64", "linux", "v8")
    oci_index = random_index(seed=3)
    assert Manifest.parse(oci_index.manifest.data).media_type == OCI_INDEX
    artifact = _doc(
        mediaType=OCI_ARTIFACT_MANIFEST,
        artifactType="application/x-sbom",
        blobs=[LAYER],
        subject={"mediaType": OCI_MANIFEST, "digest": SHA, "size": 3},
    )
    a = Manifest.parse(artifact)
    assert a.artifact_type == "application/x-sbom"
    assert a.subject is not None and a.references()[-1] == a.subject


def test_oci_manifest_with_subject_artifact_type_and_annotations() -> None:
    data = _doc(
        schemaVersion=2,
        mediaType=OCI_MANIFEST,
        artifactType="application/vnd.example+type",
        config={"mediaType": "application/vnd.oci.empty.v1+json", "digest": SHA, "size": 2},
        layers=[LAYER],
        subject={"mediaType": OCI_MANIFEST, "digest": SHA, "size": 3},
        annotations={"org.example": "yes"},
    )
    m = Manifest.parse(data)
    assert m.artifact_type == "application/vnd.example+type"
    assert m.annotations == {"org.example": "yes"}
    assert m.subject is not None and len(m.references()) == 3


def test_media_type_inferred_when_document_omits_it() -> None:
    m = Manifest.parse(_doc(schemaVersion=2, config=CONFIG, layers=[LAYER]))
    assert m.media_type == OCI_MANIFEST
    m = Manifest.parse(_doc(schemaVersion=2, config=CONFIG, layers=[LAYER]), OCI_MANIFEST)
    assert m.media_type == OCI_MANIFEST


@pytest.mark.parametrize(
    ("data", "media_type", "says"),
    [
        (b"not json", None, "JSON"),
        (b"[1, 2]", None, "object"),
        (_doc(schemaVersion=1, name="x", tag="y", fsLayers=[]), None, "schema 1"),
        (
            _doc(schemaVersion=1, mediaType="application/vnd.docker.distribution.manifest.v1+json"),
            None,
            "schema 1",
        ),
        (
            _doc(schemaVersion=2, config=CONFIG),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema 1",
        ),
        (
            _doc(schemaVersion=3, mediaType=OCI_MANIFEST, config=CONFIG, layers=[]),
            None,
            "schemaVersion",
        ),
        (_doc(mediaType=OCI_MANIFEST, config=CONFIG, layers=[]), None, "schemaVersion"),
        (_doc(schemaVersion=2, mediaType=OCI_MANIFEST, layers=[]), None, "config"),
        (_doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG), None, "layers"),
        (_doc(schemaVersion=2, mediaType=OCI_INDEX), None, "manifests"),
        (
            _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG, layers=[{"size": 1}]),
            None,
            r"layers\[0\]",
        ),
        (
            _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG, layers=[]),
            OCI_INDEX,
            "given as",
        ),
        (
            _doc(schemaVersion=2, mediaType="text/html", config=CONFIG, layers=[]),
            None,
            "unsupported",
        ),
        (_doc(schemaVersion=2, config=CONFIG, layers=[]), "application/json", "unsupported"),
        (_doc(schemaVersion=2, config=CONFIG, layers=[]), DOCKER_MANIFEST, "declare"),
        (b"{}", None, "cannot tell"),
    ],
)
def test_manifest_invalid(data: bytes, media_type: str | None, says: str) -> None:
    with pytest.raises(ManifestInvalid, match=says):
        Manifest.parse(data, media_type)


def test_manifest_size_limit() -> None:
    padding = "x" * (4 * 1024 * 1024)
    data = _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG, layers=[], p=padding)
    with pytest.raises(ManifestInvalid, match="limit"):
        Manifest.parse(data)


def test_media_type_parameters_ignored() -> None:
    image = random_image(seed=4)
    m = Manifest.parse(image.manifest.data, OCI_MANIFEST + "; charset=utf-8")
    assert m.media_type == OCI_MANIFEST


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_any_bytes_parse_or_raise_manifest_invalid(data: bytes) -> None:
    try:
        m = Manifest.parse(data)
    except ManifestInvalid:
        return
    assert m.digest == Digest.from_bytes(data)


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=0, max_value=4))
@settings(max_examples=25, deadline=None)
def test_generated_manifest_digest_is_digest_of_bytes(seed: int, layers: int) -> None:
    image = random_image(seed=seed, layers=layers, layer_size=16)
    assert image.manifest.digest == Digest.from_bytes(image.manifest.data)
    again = Manifest.parse(image.manifest.data)
    assert again == image.manifest and again.digest == image.manifest.digest


# -- hostile JSON (issue 10 bug 2, issue 11 finding 10) ---------------------------


@pytest.mark.parametrize(
    "nesting",
    [
        b"[" * 100_000 + b"]" * 100_000,  # about 200 KB of arrays
        b'{"a":' * 40_000 + b"1" + b"}" * 40_000,  # about 200 KB of objects
    ],
    ids=["arrays", "objects"],
)
def test_deep_nesting_is_manifest_invalid_not_recursion_error(nesting: bytes) -> None:
    data = _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG, layers=[])
    hostile = data[:-1] + b', "x": ' + nesting + b"}"
    assert 190_000 < len(hostile) < 4 * 1024 * 1024
    with pytest.raises(ManifestInvalid, match="nested deeper"):
        Manifest.parse(hostile)
    with pytest.raises(ManifestInvalid, match="nested deeper"):
        Manifest.parse(nesting)
    with pytest.raises(ManifestInvalid):
        Descriptor.parse(nesting)


def test_nesting_of_real_manifests_is_accepted() -> None:
    # A manifest nests a few levels; annotations and platforms add one or two.
    m = Manifest.parse(random_index(seed=3).manifest.data)
    assert m.is_index


def test_duplicate_keys_are_manifest_invalid() -> None:
    # Two parsers can read a duplicated key two ways (first or last wins): a
    # registry and a client could then disagree on what one digest means.
    data = _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=CONFIG, layers=[])
    twice = data[:-1] + b', "mediaType": "' + OCI_INDEX.encode() + b'"}'
    with pytest.raises(ManifestInvalid, match="duplicate key 'mediaType'"):
        Manifest.parse(twice)
    nested = b'{"mediaType": "a/b", "digest": "%s", "size": 1, "size": 2}' % SHA.encode()
    with pytest.raises(ManifestInvalid, match="duplicate key 'size'"):
        Descriptor.parse(nested)


def test_descriptor_parse_refuses_non_text() -> None:
    with pytest.raises(ManifestInvalid, match="str or bytes"):
        Descriptor.parse(123)  # type: ignore[arg-type]


# -- referrers and declared sizes ----------------------------------------------------


def test_referrer_descriptor_takes_artifact_type_else_config_type() -> None:
    subject = {"mediaType": OCI_MANIFEST, "digest": SHA, "size": 3}
    typed = Manifest.parse(
        _doc(
            schemaVersion=2,
            mediaType=OCI_MANIFEST,
            artifactType="application/spdx+json",
            config={"mediaType": "application/vnd.oci.empty.v1+json", "digest": SHA, "size": 2},
            layers=[LAYER],
            subject=subject,
            annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        )
    )
    found = typed.referrer()
    assert found == Descriptor(
        OCI_MANIFEST,
        typed.digest,
        typed.size,
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        artifact_type="application/spdx+json",
    )
    untyped = Manifest.parse(
        _doc(
            schemaVersion=2,
            mediaType=OCI_MANIFEST,
            config={"mediaType": "application/vnd.example.sig", "digest": SHA, "size": 2},
            layers=[],
            subject=subject,
        )
    )
    assert untyped.referrer().artifact_type == "application/vnd.example.sig"
    assert untyped.referrer().annotations is None
    index = Manifest.parse(
        _doc(schemaVersion=2, mediaType=OCI_INDEX, manifests=[], subject=subject)
    )
    assert index.referrer().artifact_type is None
    with pytest.raises(ManifestInvalid, match="no subject"):
        random_image(seed=1).manifest.referrer()


def test_descriptor_check_held_compares_declared_size() -> None:
    declared = Descriptor("application/octet-stream", SHA, 10)
    declared.check_held(Descriptor("application/octet-stream", SHA, 10))
    with pytest.raises(ManifestInvalid, match="declares 10 bytes, but the blob has 11") as info:
        declared.check_held(Descriptor("application/octet-stream", SHA, 11))
    assert info.value.code == "MANIFEST_INVALID"
    with pytest.raises(InvalidInput, match="not the content"):
        declared.check_held(Descriptor("application/octet-stream", "sha256:" + "b" * 64, 10))
