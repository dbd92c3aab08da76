"""The public surface is deliberate: pinned names and the error tree."""

from __future__ import annotations

import pytest

import dockerconnect
import dockerconnect.http
import dockerconnect.testing
from dockerconnect import errors

PUBLIC = {
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES",
    "OCI_ARTIFACT_MANIFEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Observer",
    "Annotations",
    "BlobStore",
    "BlobStream",
    "BlobWriter",
    "CachedBlob",
    "CachedManifest",
    "CachingPolicy",
    "Connector",
    "ConnectorHealth",
    "Descriptor",
    "Digest",
    "DigestVerifier",
    "DockerConnectError",
    "Event",
    "FilesystemBlobStore",
    "FilesystemManifestStore",
    "HealthPolicy",
    "IntegrityEntry",
    "IntegrityReport",
    "Manifest",
    "ManifestStore",
    "ManifestUsageLog",
    "MemoryBlobStore",
    "MemoryManifestStore",
    "OciLayoutConnector",
    "Platform",
    "PruneReport",
    "Reference",
    "ReferrersIndex",
    "ReferrersSource",
    "Registry",
    "RegistryConnector",
    "Resolver",
    "ResolverStats",
    "RetentionPolicy",
    "StaleDecision",
    "TagDecision",
    "TagRecord",
    "UsageLog",
    "errors",
    "export_layout",
    "validate_repository",
    "validate_tag",
}


def test_all_is_pinned() -> None:
    assert set(dockerconnect.__all__) == PUBLIC
    for name in dockerconnect.__all__:
        assert hasattr(dockerconnect, name), name


HTTP_PUBLIC = {
    "DOCKER_HUB_URL",
    "Credentials",
    "HttpConnector",
    "Limits",
    "ListingBounds",
    "RateLimit",
    "Retry",
}

TESTING_PUBLIC = {
    "BlobStoreConformance",
    "BlobStoreFactory",
    "ConnectorConformance",
    "ConnectorFactory",
    "CountingConnector",
    "DistributionRegistry",
    "FakeUpstream",
    "Faults",
    "ManifestStoreConformance",
    "ManifestStoreFactory",
    "RandomImage",
    "RandomIndex",
    "TokenAuthConfig",
    "ToolNotInstalled",
    "push_content",
    "random_artifact",
    "random_blob",
    "random_image",
    "random_index",
    "skopeo_push",
    "write_oci_layout",
}


def test_http_all_is_pinned() -> None:
    assert set(dockerconnect.http.__all__) == HTTP_PUBLIC
    for name in dockerconnect.http.__all__:
        assert hasattr(dockerconnect.http, name), name


def test_testing_all_is_pinned() -> None:
    assert set(dockerconnect.testing.__all__) == TESTING_PUBLIC
    for name in dockerconnect.testing.__all__:
        assert hasattr(dockerconnect.testing, name), name


@pytest.mark.parametrize("module", [dockerconnect, dockerconnect.http, dockerconnect.testing])
def test_all_has_no_duplicates(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert len(names) == len(set(names))


def test_errors_all_resolves() -> None:
    for name in errors.__all__:
        assert hasattr(errors, name), name


@pytest.mark.parametrize(
    ("cls", "base", "code", "status"),
    [
        (errors.NameInvalid, errors.InvalidInput, "NAME_INVALID", 400),
        (errors.TagInvalid, errors.InvalidInput, "TAG_INVALID", 400),
        (errors.DigestInvalid, errors.InvalidInput, "DIGEST_INVALID", 400),
        (errors.ManifestInvalid, errors.InvalidInput, "MANIFEST_INVALID", 400),
        (errors.ManifestBlobUnknown, errors.InvalidInput, "MANIFEST_BLOB_UNKNOWN", 400),
        (errors.ManifestUnknown, errors.NotFound, "MANIFEST_UNKNOWN", 404),
        (errors.BlobUnknown, errors.NotFound, "BLOB_UNKNOWN", 404),
        (errors.NameUnknown, errors.NotFound, "NAME_UNKNOWN", 404),
        (errors.DigestMismatch, errors.DockerConnectError, "DIGEST_INVALID", 400),
        (errors.Unsupported, errors.DockerConnectError, "UNSUPPORTED", 400),
        (errors.Unauthorized, errors.UpstreamError, "UNAUTHORIZED", 401),
        (errors.Denied, errors.UpstreamError, "DENIED", 403),
        (errors.TooManyRequests, errors.UpstreamError, "TOOMANYREQUESTS", 429),
        (errors.ConnectorCycle, errors.UpstreamError, "UNKNOWN", 508),
    ],
)
def test_error_tree_codes_and_statuses(
    cls: type[errors.DockerConnectError], base: type[Exception], code: str, status: int
) -> None:
    assert issubclass(cls, base)
    assert issubclass(cls, errors.DockerConnectError)
    assert cls.code == code and cls.status == status
    err = cls("boom", repository="a/b", connector="hub")
    assert err.to_oci() == {"code": code, "message": "boom"}
    assert "connector='hub'" in str(err) and "repository='a/b'" in str(err)


def test_input_errors_are_value_errors() -> None:
    assert issubclass(errors.InvalidInput, ValueError)
    with pytest.raises(ValueError):
        dockerconnect.Digest.parse("nope")


def test_error_tree_drawn_in_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, name


def test_upstream_error_carries_failures() -> None:
    inner = errors.TooManyRequests("slow down", retry_after=3.0, connector="hub")
    outer = errors.UpstreamError("all failed", failures={"hub": inner})
    assert outer.failures["hub"] is inner and inner.retry_after == 3.0
    assert outer.retryable and not errors.Denied.retryable


def test_manifest_blob_unknown_lists_missing() -> None:
    d = dockerconnect.Descriptor("a/b", "sha256:" + "a" * 64, 1)
    err = errors.ManifestBlobUnknown("missing", missing=[d])
    assert err.missing == (d,)
    assert err.to_oci()["detail"] == [{"digest": str(d.digest)}]
