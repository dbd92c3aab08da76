"""What dockerconnect.asgi adds to the old example: conformance fixes (sha512
digests, blob DELETE, referrers, OCI-Subject, empty blobs), upstream credential
errors, operations endpoints, and mounting inside Starlette."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest

from dockerconnect import OCI_MANIFEST, Descriptor, Digest, Registry
from dockerconnect.errors import Unauthorized
from dockerconnect.testing import random_image

from ._support import client_for, oci_error, serve

pytestmark = pytest.mark.anyio

OCI = {"content-type": OCI_MANIFEST}


class Extended:
    """A Registry wrapper with the calls the server uses when a registry has
    them (``delete_blob``, ``referrers``, a digest as ``push_manifest``'s tag);
    it records what reached it."""

    def __init__(self, inner: Registry, referrers: list[Descriptor] | None = None) -> None:
        self._inner = inner
        self.name = inner.name
        self.calls: list[tuple[Any, ...]] = []
        self._referrers = referrers or []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def push_manifest(
        self, repository: str, data: bytes, *, media_type: str, tag: str | None = None
    ) -> Descriptor:
        self.calls.append(("push_manifest", repository, tag))
        plain = None if tag is not None and ":" in tag else tag
        return await self._inner.push_manifest(repository, data, media_type=media_type, tag=plain)

    async def delete_blob(self, repository: str, digest: Digest) -> None:
        self.calls.append(("delete_blob", repository, str(digest)))

    async def referrers(
        self, repository: str, digest: Digest | str, *, artifact_type: str | None = None
    ) -> list[Descriptor]:
        self.calls.append(("referrers", repository, str(digest), artifact_type))
        return [d for d in self._referrers if artifact_type in (None, d.artifact_type)]


class WithoutReferrers:
    """A Registry wrapper that hides ``referrers``, as a registry without it."""

    def __init__(self, inner: Registry) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "referrers":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_a_manifest_pushed_by_sha512_is_answered_in_sha512(tmp_path: Path) -> None:
    image = random_image(seed=31)
    async with serve(tmp_path) as env:
        registry = Extended(env.resolver)
        app_env = serve(tmp_path / "b", registry=registry)
        async with app_env as sub:
            for digest, data in image.blobs.items():
                await sub.client.post(f"/v2/app/blobs/uploads/?digest={digest}", content=data)
            sha512 = Digest.from_bytes(image.manifest.data, "sha512")
            r = await sub.client.put(
                f"/v2/app/manifests/{sha512}",
                content=image.manifest.data,
                headers={"content-type": OCI_MANIFEST},
            )
            assert r.status_code == 201, r.text
            assert r.headers["docker-content-digest"] == str(sha512)
            assert r.headers["location"] == f"/v2/app/manifests/{sha512}"
            # The registry is asked to answer to the sha512 digest too.
            assert registry.calls == [("push_manifest", "app", str(sha512))]
            wrong = Digest.from_bytes(b"other", "sha512")
            r = await sub.client.put(
                f"/v2/app/manifests/{wrong}",
                content=image.manifest.data,
                headers={"content-type": OCI_MANIFEST},
            )
            oci_error(r, 400, "DIGEST_INVALID")
            assert len(registry.calls) == 1


class WithoutDeleteBlob:
    """A Registry without ``delete_blob`` (it is not part of the protocol)."""

    def __init__(self, inner: Registry) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "delete_blob":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_blob_delete_calls_the_registry_when_it_can(tmp_path: Path) -> None:
    digest = Digest.from_bytes(b"x")
    async with serve(tmp_path) as env:
        # The Resolver has delete_blob: the blob goes, and a second DELETE is a 404.
        await env.resolver.push_blob("app", b"x", digest=digest)
        assert (await env.client.delete(f"/v2/app/blobs/{digest}")).status_code == 202
        assert await env.resolver.blobs.stat(digest) is None
        oci_error(await env.client.delete(f"/v2/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
        async with serve(tmp_path / "c", registry=WithoutDeleteBlob(env.resolver)) as plain:
            r = await plain.client.delete(f"/v2/app/blobs/{digest}")
            oci_error(r, 405, "UNSUPPORTED")
        registry = Extended(env.resolver)
        async with serve(tmp_path / "b", registry=registry) as sub:
            r = await sub.client.delete(f"/v2/app/blobs/{digest}")
            assert r.status_code == 202
            assert registry.calls == [("delete_blob", "app", str(digest))]
            oci_error(await sub.client.delete("/v2/app/blobs/sha256:nope"), 400, "DIGEST_INVALID")
            assert len(registry.calls) == 1


async def test_referrers_with_and_without_a_filter(tmp_path: Path) -> None:
    subject = Digest.from_bytes(b"subject")
    sbom = Descriptor(OCI_MANIFEST, Digest.from_bytes(b"a"), 10, artifact_type="application/sbom")
    sig = Descriptor(OCI_MANIFEST, Digest.from_bytes(b"b"), 11, artifact_type="application/sig")
    async with serve(tmp_path) as env:
        # A registry without referrers: 404, so clients use the tag schema.
        async with serve(tmp_path / "c", registry=WithoutReferrers(env.resolver)) as bare:
            oci_error(await bare.client.get(f"/v2/app/referrers/{subject}"), 404, "UNKNOWN")
        registry = Extended(env.resolver, [sbom, sig])
        async with serve(tmp_path / "b", registry=registry) as sub:
            r = await sub.client.get(f"/v2/app/referrers/{subject}")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
            assert "oci-filters-applied" not in r.headers
            index = r.json()
            assert index["schemaVersion"] == 2
            assert [m["digest"] for m in index["manifests"]] == [str(sbom.digest), str(sig.digest)]
            assert index["manifests"][0]["artifactType"] == "application/sbom"
            r = await sub.client.get(
                f"/v2/app/referrers/{subject}", params={"artifactType": "application/sig"}
            )
            assert r.headers["oci-filters-applied"] == "artifactType"
            assert [m["digest"] for m in r.json()["manifests"]] == [str(sig.digest)]
            assert registry.calls[-1] == ("referrers", "app", str(subject), "application/sig")
            oci_error(await sub.client.get("/v2/app/referrers/sha256:x"), 400, "DIGEST_INVALID")


async def test_a_pushed_manifest_with_a_subject_is_answered_with_oci_subject(
    tmp_path: Path,
) -> None:
    base = random_image(seed=32)
    async with serve(tmp_path) as env:
        for digest, data in base.blobs.items():
            await env.client.post(f"/v2/app/blobs/uploads/?digest={digest}", content=data)
        await env.client.put(
            "/v2/app/manifests/v1",
            content=base.manifest.data,
            headers={"content-type": OCI_MANIFEST},
        )
        config = b"{}"
        await env.client.post(
            f"/v2/app/blobs/uploads/?digest={Digest.from_bytes(config)}", content=config
        )
        referrer = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/sbom",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(Digest.from_bytes(config)),
                "size": 2,
            },
            "layers": [],
            "subject": base.manifest.descriptor().to_dict(),
        }
        data = json.dumps(referrer).encode()
        r = await env.client.put(
            f"/v2/app/manifests/{Digest.from_bytes(data)}",
            content=data,
            headers={"content-type": OCI_MANIFEST},
        )
        assert r.status_code == 201, r.text
        assert r.headers["oci-subject"] == str(base.manifest.digest)
        r = await env.client.put(
            "/v2/app/manifests/v2",
            content=base.manifest.data,
            headers={"content-type": OCI_MANIFEST},
        )
        assert "oci-subject" not in r.headers


async def test_an_empty_blob_ends_its_response(tmp_path: Path) -> None:
    from tests.test_asgi_server import call

    async with serve(tmp_path) as env:
        digest = Digest.from_bytes(b"")
        r = await env.client.post(f"/v2/app/blobs/uploads/?digest={digest}", content=b"")
        assert r.status_code == 201
        messages, _ = await call(env.app, "GET", f"/v2/app/blobs/{digest}")
        assert messages[0]["status"] == 200
        assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_upstream_credential_failures_are_502_naming_the_upstream(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:

        async def refused(*args: object, **kwargs: object) -> None:
            raise Unauthorized("authentication required", connector="hub")

        env.upstream.get_manifest = refused  # type: ignore[method-assign]
        env.upstream.head_manifest = refused  # type: ignore[method-assign]
        r = await env.client.get("/v2/app/manifests/v1")
        assert r.status_code == 502, r.text
        message = r.json()["errors"][0]["message"]
        assert "'hub'" in message and "credentials" in message and "not your login" in message
        assert "www-authenticate" not in r.headers  # the client is not asked to log in


# -- operations --------------------------------------------------------------------------


@attrs.frozen
class _State:
    state: str


async def test_healthz_readyz_and_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = random_image(seed=33)
    async with serve(tmp_path) as env:
        env.upstream.add("team/app", image, tag="v1")
        assert (await env.client.get("/healthz")).json() == {"status": "ok"}
        r = await env.client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"store": "ok", "connectors": {"hub": "up"}}
        with caplog.at_level(logging.INFO, logger="dockerconnect.asgi.access"):
            assert (await env.client.get("/v2/team/app/manifests/v1")).status_code == 200
        (line,) = [r.getMessage() for r in caplog.records if r.name == "dockerconnect.asgi.access"]
        assert '"GET /v2/team/app/manifests/v1" 200' in line and "route=manifest" in line
        text = (await env.client.get("/metrics")).text
        assert (
            'dockerconnect_upstream_requests_total{connector="hub",operation="get_manifest",'
            'outcome="hit"} 1.0' in text
        )
        assert (
            'dockerconnect_http_requests_total{method="GET",route="manifest",status="200"} 1.0'
            in text
        )
        assert 'dockerconnect_lookups_total{connector="hub",outcome="hit"}' in text
        assert "hub:get_manifest" not in text  # labels, not colon-joined names


async def test_readyz_reports_connector_health_and_an_unwritable_store(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        registry = Extended(env.resolver)
        registry.health = {"hub": _State("down"), "mirror": _State("up")}  # type: ignore[attr-defined]
        async with serve(tmp_path / "b", registry=registry) as sub:
            r = await sub.client.get("/readyz")
            assert r.status_code == 200
            assert r.json()["checks"]["connectors"] == {"hub": "down", "mirror": "up"}
            assert (
                'dockerconnect_connector_up{connector="hub"} 0.0'
                in (await sub.client.get("/metrics")).text
            )
            registry.health = {"hub": _State("down")}  # type: ignore[attr-defined]
            r = await sub.client.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            # A store that cannot be written to (here: its upload directory is a file).
            registry.health = {}  # type: ignore[attr-defined]
            uploads = tmp_path / "b" / "uploads"
            uploads.rmdir()
            uploads.write_bytes(b"not a directory")
            r = await sub.client.get("/readyz")
            assert r.status_code == 503
            assert str(uploads) in r.json()["checks"]["store"]


async def test_mounted_inside_starlette(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    image = random_image(seed=34)
    async with serve(tmp_path) as env:
        env.upstream.add("app", image, tag="v1")

        async def home(request: Any) -> PlainTextResponse:
            return PlainTextResponse("the company portal")

        outer = Starlette(routes=[Route("/", home), Mount("/", app=env.app)])
        async with client_for(outer) as client:
            assert (await client.get("/")).text == "the company portal"
            r = await client.get("/v2/app/manifests/v1")
            assert r.status_code == 200 and r.content == image.manifest.data
            assert r.headers["docker-distribution-api-version"] == "registry/2.0"
            oci_error(await client.get("/v2/app/manifests/nope"), 404, "MANIFEST_UNKNOWN")


async def test_a_failed_request_is_counted_under_its_route(tmp_path: Path) -> None:
    async with serve(tmp_path) as env:
        digest = Digest.from_bytes(b"nowhere")
        assert (await env.client.head(f"/v2/app/blobs/{digest}")).status_code == 404
        assert (await env.client.get("/v2/app/nothing/here")).status_code == 404
        text = (await env.client.get("/metrics")).text
        assert (
            'dockerconnect_http_requests_total{method="HEAD",route="blob",status="404"} 1.0' in text
        )
        assert 'dockerconnect_http_requests_total{method="GET",route="v2",status="404"} 1.0' in text


def test_the_public_names_of_dockerconnect_asgi() -> None:
    import dockerconnect.asgi

    assert sorted(dockerconnect.asgi.__all__) == [
        "AccessDenied",
        "Action",
        "AuthenticationRequired",
        "Authenticator",
        "Authorizer",
        "CHUNK_SIZE",
        "HtpasswdAuthenticator",
        "Identity",
        "MAX_MANIFEST_SIZE",
        "ManifestTooLarge",
        "MethodNotAllowed",
        "RegistryApp",
        "RouteUnknown",
        "Rule",
        "RuleAuthorizer",
        "TokenAuthenticator",
        "TooManySessions",
        "UPLOAD_TTL",
        "UploadSessions",
        "create_app",
        "stats_metrics",
    ]
    for name in dockerconnect.asgi.__all__:
        assert hasattr(dockerconnect.asgi, name)
