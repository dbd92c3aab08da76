"""A scriptable registry HTTP API behind ``httpx.MockTransport``, for fault tests."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from dockerconnect._manifest import Manifest
from dockerconnect.testing import RandomImage, RandomIndex

REGISTRY = "https://registry.test"
REALM = "https://auth.test/token"
SERVICE = "registry.test"

Hook = Callable[[httpx.Request], "httpx.Response | None"]


def oci_error(status: int, code: str, message: str = "", **headers: str) -> httpx.Response:
    body = {"errors": [{"code": code, "message": message or code.lower()}]}
    return httpx.Response(status, json=body, headers=headers)


class Chunks(httpx.AsyncByteStream):
    """A response body sent in pieces, optionally breaking after some of them."""

    def __init__(self, pieces: list[bytes], *, fail_with: Exception | None = None) -> None:
        self.pieces = pieces
        self.fail_with = fail_with
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail_with is not None:
            raise self.fail_with

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """An in-memory registry: manifests, blobs, tags, catalog, Range, auth.

    ``auth`` is ``None``, ``"basic"`` (user ``alice`` / ``s3cret``) or
    ``"bearer"`` (tokens from ``REALM``, which accepts the same user or
    anonymous requests). ``hooks`` run first and may answer any request.
    """

    def __init__(
        self,
        *,
        auth: str | None = None,
        token_lifetime: int | None = 300,
        token_field: str = "token",
    ) -> None:
        self.auth = auth
        self.token_lifetime = token_lifetime
        self.token_field = token_field
        self.users = {"alice": "s3cret"}
        self.manifests: dict[tuple[str, str], Manifest] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.requests: list[httpx.Request] = []
        self.hooks: list[Hook] = []
        self.valid_tokens: set[str] = set()
        self.token_requests: list[httpx.Request] = []
        self.page_size = 2

    def add(self, repository: str, content: RandomImage | RandomIndex, tag: str = "latest") -> None:
        for digest, data in content.blobs.items():
            self.blobs[(repository, str(digest))] = data
        for digest, manifest in content.manifests.items():
            self.manifests[(repository, str(digest))] = manifest
        self.tags.setdefault(repository, {})[tag] = str(content.manifest.digest)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport())

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for hook in self.hooks:
            answer = hook(request)
            if answer is not None:
                return answer
        if request.url.host == "auth.test":
            return self._token(request)
        if request.url.host != "registry.test":
            return httpx.Response(404)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        if path == "/v2/_catalog":
            return self._listing(request, "repositories", sorted(self.tags))
        match = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", path)
        if match:
            repository, kind, reference = match.groups()
            if kind == "manifests":
                return self._manifest(request, repository, reference)
            return self._blob(request, repository, reference)
        match = re.fullmatch(r"/v2/(.+)/tags/list", path)
        if match:
            repository = match.group(1)
            if repository not in self.tags:
                return oci_error(404, "NAME_UNKNOWN")
            return self._listing(request, "tags", sorted(self.tags[repository]), repository)
        return httpx.Response(404)

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        given = request.headers.get("authorization")
        if self.auth == "basic":
            expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
            if given != expected:
                return oci_error(
                    401, "UNAUTHORIZED", **{"WWW-Authenticate": 'Basic realm="registry"'}
                )
        if self.auth == "bearer":
            token = given[len("Bearer ") :] if given and given.startswith("Bearer ") else None
            if token not in self.valid_tokens:
                scope = ""
                match = re.fullmatch(r"/v2/(.+)/(manifests|blobs|tags)/.*", request.url.path)
                if match:
                    scope = f',scope="repository:{match.group(1)}:pull"'
                challenge = f'Bearer realm="{REALM}",service="{SERVICE}"{scope}'
                return oci_error(401, "UNAUTHORIZED", **{"WWW-Authenticate": challenge})
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        given = request.headers.get("authorization")
        if given is not None:
            expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
            if given != expected:
                return httpx.Response(401, json={"details": "bad credentials"})
        token = f"tok-{len(self.token_requests)}"
        self.valid_tokens.add(token)
        body: dict[str, Any] = {self.token_field: token}
        if self.token_lifetime is not None:
            body["expires_in"] = self.token_lifetime
        return httpx.Response(200, json=body)

    def _manifest(self, request: httpx.Request, repository: str, reference: str) -> httpx.Response:
        digest = self.tags.get(repository, {}).get(reference, reference)
        manifest = self.manifests.get((repository, digest))
        if manifest is None:
            return oci_error(404, "MANIFEST_UNKNOWN")
        headers = {
            "Content-Type": manifest.media_type,
            "Docker-Content-Digest": str(manifest.digest),
            "Content-Length": str(len(manifest.data)),
        }
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=manifest.data)

    def _blob(self, request: httpx.Request, repository: str, digest: str) -> httpx.Response:
        data = self.blobs.get((repository, digest))
        if data is None:
            return oci_error(404, "BLOB_UNKNOWN")
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
        status, start = 200, 0
        if match:
            start = int(match.group(1))
            if start >= len(data):
                return httpx.Response(416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(data) - start)
        if request.method == "HEAD":
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, headers=headers, content=data[start:])

    def _listing(
        self, request: httpx.Request, key: str, names: list[str], repository: str | None = None
    ) -> httpx.Response:
        last = request.url.params.get("last")
        if last is not None:
            names = [n for n in names if n > last]
        page = names[: self.page_size]
        body: dict[str, Any] = {key: page}
        if repository is not None:
            body["name"] = repository
        headers = {}
        if len(names) > len(page):
            link = request.url.copy_merge_params({"last": page[-1]})
            headers["Link"] = f'<{link.raw_path.decode()}>; rel="next"'
        return httpx.Response(200, headers=headers, content=json.dumps(body).encode())
