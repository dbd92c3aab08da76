"""Helpers shared by the ``dockerconnect.asgi`` tests: an app over a Resolver
with memory stores and a counted fake upstream, driven through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx

from dockerconnect import MemoryBlobStore, MemoryManifestStore, Registry, Resolver
from dockerconnect.asgi import RegistryApp, create_app
from dockerconnect.testing import CountingConnector, FakeUpstream


@attrs.define
class Env:
    client: httpx.AsyncClient
    resolver: Resolver
    upstream: FakeUpstream
    counted: CountingConnector
    app: RegistryApp


def make_resolver(upstream: FakeUpstream | None = None) -> tuple[Resolver, FakeUpstream, Any]:
    upstream = upstream or FakeUpstream("hub")
    counted = CountingConnector(upstream)
    resolver = Resolver(
        "local", manifests=MemoryManifestStore(), blobs=MemoryBlobStore(), connectors=[counted]
    )
    return resolver, upstream, counted


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
        yield client


@asynccontextmanager
async def serve(
    tmp_path: Path, *, registry: Registry | None = None, **kwargs: Any
) -> AsyncIterator[Env]:
    resolver, upstream, counted = make_resolver()
    kwargs.setdefault("upload_dir", tmp_path / "uploads")
    app = create_app(registry if registry is not None else resolver, **kwargs)
    async with resolver, client_for(app) as client:
        yield Env(client, resolver, upstream, counted, app)


def oci_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is an OCI error body with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert [e["code"] for e in body["errors"]] == [code], body
    return body["errors"][0]  # type: ignore[no-any-return]


def session_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())
