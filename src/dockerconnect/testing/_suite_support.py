"""What the conformance suites share: bad inputs, store factories, small helpers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._protocols import BlobStore, ManifestStore
from dockerconnect._stream import CHUNK_SIZE

__all__ = [
    "INVALID_DIGESTS",
    "INVALID_NAMES",
    "INVALID_TAGS",
    "BlobStoreFactory",
    "ManifestStoreFactory",
    "untyped",
    "make_store",
    "put_blob",
]

S = TypeVar("S")

#: What a ``blob_store_factory`` fixture returns.
BlobStoreFactory = Callable[[], BlobStore | Awaitable[BlobStore]]
#: What a ``manifest_store_factory`` fixture returns.
ManifestStoreFactory = Callable[[], ManifestStore | Awaitable[ManifestStore]]

#: Digests that break the OCI grammar, including path traversal attempts.
INVALID_DIGESTS = (
    "",
    "sha256",
    "sha256:",
    ":" + "0" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "A" * 64,
    "SHA256:" + "0" * 64,
    "sha256:../../../etc/passwd",
    "sha256:abc/def",
    "../" + "0" * 64,
    "/etc/passwd",
    "sha256:" + "0" * 64 + "\n",
)
#: Repository names that break the distribution-spec grammar or try to escape.
INVALID_NAMES = (
    "",
    ".",
    "..",
    "../x",
    "a/../../b",
    "a/./b",
    "/abs",
    "a//b",
    "a/",
    "Upper",
    "a b",
    "a\x00b",
    "a\\b",
    "_manifests",
    "a/_tags",
    "x" * 256,
)
#: Tags that break ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`` or try to escape.
INVALID_TAGS = ("", ".", "..", "../x", "a/b", "/abs", "-x", ".x", "a b", "a:b", "a\\b", "x" * 129)


async def make_store(factory: Callable[[], S | Awaitable[S]]) -> S:
    """Call a store factory, awaiting its result when it is awaitable."""
    made = factory()
    if inspect.isawaitable(made):
        return await made
    return made


def untyped(value: object) -> Any:
    # The suite passes invalid values where the protocol wants a Digest: a
    # store must refuse them rather than trust its caller's type checker.
    return value


async def put_blob(store: BlobStore, data: bytes, *, piece: int = CHUNK_SIZE) -> Descriptor:
    """Ingest ``data`` in writes of ``piece`` bytes and commit it."""
    digest = Digest.from_bytes(data)
    async with store.ingest(digest, len(data)) as writer:
        for start in range(0, len(data), piece):
            await writer.write(data[start : start + piece])
        return await writer.commit()
