"""Access control: htpasswd basic auth, bearer JWTs, per-repository rules."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dockerconnect import Digest
from dockerconnect.asgi import HtpasswdAuthenticator, Rule, RuleAuthorizer, TokenAuthenticator
from dockerconnect.testing import random_image

from ._support import oci_error, serve

pytestmark = pytest.mark.anyio


def basic(user: str, password: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {value}"}


def htpasswd(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "htpasswd"
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}" for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_htpasswd_anonymous_pull_authenticated_push(tmp_path: Path) -> None:
    image = random_image(seed=41)
    auth = HtpasswdAuthenticator(htpasswd(tmp_path, alice="s3cret", bob="hunter2"))
    rules = RuleAuthorizer([Rule("private/*", pull="authenticated", push=("alice",))])
    async with serve(tmp_path, authenticator=auth, authorizer=rules) as env:
        env.upstream.add("app", image, tag="v1")
        # The base endpoint asks for credentials (clients probe it before logging in).
        r = await env.client.get("/v2/")
        oci_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"] == 'Basic realm="dockerconnect"'
        assert (await env.client.get("/v2/", headers=basic("alice", "s3cret"))).status_code == 200
        oci_error(
            await env.client.get("/v2/", headers=basic("alice", "wrong")), 401, "UNAUTHORIZED"
        )
        # Anonymous pull, authenticated push.
        assert (await env.client.get("/v2/app/manifests/v1")).status_code == 200
        r = await env.client.post("/v2/app/blobs/uploads/")
        oci_error(r, 401, "UNAUTHORIZED")
        assert "basic" in r.headers["www-authenticate"].lower()
        assert (
            await env.client.post("/v2/app/blobs/uploads/", headers=basic("bob", "hunter2"))
        ).status_code == 202
        # Per-repository rules: private/* needs a login to pull, and only alice pushes.
        oci_error(await env.client.get("/v2/private/x/tags/list"), 401, "UNAUTHORIZED")
        r = await env.client.get("/v2/private/x/tags/list", headers=basic("bob", "hunter2"))
        oci_error(r, 404, "NAME_UNKNOWN")  # allowed; there is simply nothing
        r = await env.client.post("/v2/private/x/blobs/uploads/", headers=basic("bob", "hunter2"))
        oci_error(r, 403, "DENIED")
        r = await env.client.post("/v2/private/x/blobs/uploads/", headers=basic("alice", "s3cret"))
        assert r.status_code == 202
        # A mount needs pull access to where it comes from.
        digest = next(iter(image.blobs))
        r = await env.client.post(
            f"/v2/app/blobs/uploads/?mount={digest}&from=private/x",
            headers=basic("alice", "s3cret"),
        )
        assert r.status_code in (201, 202)
        oci_error(
            await env.client.post(f"/v2/app/blobs/uploads/?mount={digest}&from=private/x"),
            401,
            "UNAUTHORIZED",
        )


async def test_malformed_basic_credentials_are_401(tmp_path: Path) -> None:
    auth = HtpasswdAuthenticator(htpasswd(tmp_path, alice="s3cret"))
    async with serve(tmp_path, authenticator=auth) as env:
        for value in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Digest x"):
            r = await env.client.get("/v2/app/tags/list", headers={"authorization": value})
            oci_error(r, 401, "UNAUTHORIZED")


def test_a_bad_htpasswd_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("alice:$apr1$md5hash\n")
    with pytest.raises(ValueError, match=r"htpasswd:1: expected 'user:<bcrypt hash>'"):
        HtpasswdAuthenticator(path)


# -- bearer tokens -------------------------------------------------------------------------


def _keys(tmp_path: Path) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "token.pub"
    path.write_bytes(pem)
    return key, path


def _token(key: Any, access: list[dict[str, Any]], **claims: Any) -> dict[str, str]:
    now = int(time.time())
    body = {"iss": "auth.test", "aud": "registry.test", "sub": "carol", "exp": now + 300}
    body.update(nbf=now - 5, iat=now, access=access, **claims)
    return {
        "authorization": "Bearer " + jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})
    }


async def test_bearer_tokens_per_the_token_spec(tmp_path: Path) -> None:
    key, public = _keys(tmp_path)
    auth = TokenAuthenticator(
        realm="https://auth.test/token",
        service="registry.test",
        issuer="auth.test",
        public_key=public,
    )
    image = random_image(seed=42)
    async with serve(tmp_path, authenticator=auth) as env:
        env.upstream.add("team/app", image, tag="v1")
        r = await env.client.post("/v2/team/app/blobs/uploads/")
        oci_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"] == (
            'Bearer realm="https://auth.test/token",service="registry.test",'
            'scope="repository:team/app:pull,push"'
        )
        r = await env.client.get("/v2/")
        assert r.headers["www-authenticate"] == (
            'Bearer realm="https://auth.test/token",service="registry.test"'
        )
        pull_only = _token(key, [{"type": "repository", "name": "team/app", "actions": ["pull"]}])
        assert (
            await env.client.get("/v2/team/app/manifests/v1", headers=pull_only)
        ).status_code == 200
        # A token without the grant: 401 with the scope to ask for, not 403.
        r = await env.client.post("/v2/team/app/blobs/uploads/", headers=pull_only)
        oci_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"].endswith(
            'scope="repository:team/app:pull,push",error="insufficient_scope"'
        )
        both = _token(
            key, [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
        )
        assert (
            await env.client.post("/v2/team/app/blobs/uploads/", headers=both)
        ).status_code == 202
        # Another repository is not covered by that token.
        oci_error(
            await env.client.post("/v2/other/blobs/uploads/", headers=both), 401, "UNAUTHORIZED"
        )
        # Expired, wrong audience, wrong key: all 401.
        expired = _token(key, [], exp=int(time.time()) - 3600)
        wrong_aud = _token(key, [], aud="elsewhere")
        other_key, _ = _keys(tmp_path / "..")
        forged = _token(
            other_key, [{"type": "repository", "name": "team/app", "actions": ["push"]}]
        )
        for headers in (expired, wrong_aud, forged):
            oci_error(
                await env.client.get("/v2/team/app/tags/list", headers=headers), 401, "UNAUTHORIZED"
            )
        # The catalog is its own scope.
        r = await env.client.get("/v2/_catalog", headers=both)
        assert 'scope="registry:catalog:*"' in r.headers["www-authenticate"]
        catalog = _token(key, [{"type": "registry", "name": "catalog", "actions": ["*"]}])
        assert (await env.client.get("/v2/_catalog", headers=catalog)).status_code == 200


async def test_bearer_tokens_checked_against_a_jwks_file(tmp_path: Path) -> None:
    key, _ = _keys(tmp_path)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    auth = TokenAuthenticator(
        realm="https://auth.test/token", service="registry.test", issuer="auth.test", jwks=jwks
    )
    data = b"layer"
    async with serve(tmp_path, authenticator=auth) as env:
        token = _token(key, [{"type": "repository", "name": "app", "actions": ["pull", "push"]}])
        r = await env.client.post(
            f"/v2/app/blobs/uploads/?digest={Digest.from_bytes(data)}", content=data, headers=token
        )
        assert r.status_code == 201, r.text


async def test_administration_is_for_nobody_unless_a_rule_says(tmp_path: Path) -> None:
    auth = HtpasswdAuthenticator(htpasswd(tmp_path, alice="s3cret", bob="hunter2"))
    async with serve(tmp_path, authenticator=auth, admin=True) as env:
        r = await env.client.get("/_dockerconnect/connectors", headers=basic("alice", "s3cret"))
        oci_error(r, 403, "DENIED")
        oci_error(await env.client.get("/_dockerconnect/connectors"), 401, "UNAUTHORIZED")
    rules = RuleAuthorizer([Rule("*", admin=("alice",))])
    async with serve(tmp_path, authenticator=auth, authorizer=rules, admin=True) as env:
        r = await env.client.get("/_dockerconnect/connectors", headers=basic("alice", "s3cret"))
        assert r.json() == {"connectors": ["hub"]}
        r = await env.client.get("/_dockerconnect/connectors", headers=basic("bob", "hunter2"))
        oci_error(r, 403, "DENIED")
