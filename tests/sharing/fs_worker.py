"""One process over a shared filesystem store, for ``test_workers.py``.

It builds a ``Resolver`` over the store root named in its settings, with an
``HttpConnector`` to the upstream, opens every blob named and prints one line
per blob: ``<digest> <sha256 of the bytes it got>``. With ``"slow": true`` its
connector announces ``fetching <digest>`` at the first upstream chunk and
then dawdles, so a test can SIGKILL it mid-blob.

Usage: ``python fs_worker.py '<json settings>'``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import anyio

from dockerconnect import (
    BlobStream,
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    Resolver,
)
from dockerconnect.http import HttpConnector


class Slow(HttpConnector):
    """An ``HttpConnector`` whose blob streams say when they start, then dawdle."""

    async def open_blob(self, repository: str, digest: Digest, *, offset: int = 0) -> Any:
        stream = await super().open_blob(repository, digest, offset=offset)
        if stream is None:
            return None

        async def chunks() -> Any:
            async with stream:
                first = True
                async for chunk in stream:
                    yield chunk
                    if first:
                        print(f"fetching {digest}", flush=True)
                        first = False
                    await anyio.sleep(0.2)

        return BlobStream(digest, stream.size, chunks(), offset=offset, source=self.name)


async def main(settings: dict[str, Any]) -> None:
    kind = Slow if settings.get("slow") else HttpConnector
    upstream = kind(settings["upstream"], name="hub")
    root = settings["root"]
    results: dict[str, str] = {}
    async with (
        upstream,
        Resolver(
            settings["name"],
            manifests=FilesystemManifestStore(root),
            blobs=FilesystemBlobStore(root),
            connectors=[upstream],
        ) as registry,
    ):

        async def one(digest: str) -> None:
            hasher = hashlib.sha256()
            async with await registry.open_blob(settings["repository"], digest) as stream:
                async for chunk in stream:
                    hasher.update(chunk)
            results[digest] = f"sha256:{hasher.hexdigest()}"

        async with anyio.create_task_group() as tg:
            for digest in settings["digests"]:
                tg.start_soon(one, digest)
    for digest in settings["digests"]:
        print(digest, results[digest], flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
