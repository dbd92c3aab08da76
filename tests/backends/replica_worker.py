"""One replica, as a process of its own, for ``test_replica_processes.py``.

It shares nothing with the other replicas but Redis and the S3 endpoint. It
fetches the blobs named on its command line under the coordinator's rule,
using the guide's ``fetch`` function as written, and prints one line per blob:
``<digest> <sha256 of the bytes it served>``. With ``"slow": true`` it
announces ``fetching <digest>`` on stdout at its first upstream chunk and
then dawdles, so a test can kill it mid-blob.

Usage: ``python replica_worker.py '<json settings>'``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio

from dockerconnect import BlobStream, Digest
from dockerconnect.http import HttpConnector
from dockerconnect.redis import RedisFetchCoordinator
from dockerconnect.s3 import S3BlobStore

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "replicas.md"


def guide_fetch() -> Any:
    """The guide's ``fetch`` protocol, exactly as the page shows it."""
    text = GUIDE.read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        if block.startswith("async def fetch("):
            namespace: dict[str, Any] = {}
            exec(compile(block, str(GUIDE), "exec"), namespace)
            return namespace["fetch"]
    raise SystemExit(f"no fetch block in {GUIDE}")


class Slow:
    """A connector whose blob streams say when they start, then dawdle."""

    def __init__(self, inner: HttpConnector) -> None:
        self.inner = inner

    async def open_blob(self, repository: str, digest: Digest, *, offset: int = 0) -> Any:
        stream = await self.inner.open_blob(repository, digest, offset=offset)
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

        return BlobStream(digest, stream.size, chunks(), offset=offset, source="slow")


async def main(settings: dict[str, Any]) -> None:
    fetch = guide_fetch()
    coordinator = RedisFetchCoordinator(
        settings["redis"],
        prefix=settings["prefix"],
        lease_ttl=settings["lease_ttl"],
        poll_interval=0.05,
        owner=settings["owner"],
    )
    store = S3BlobStore(settings["bucket"], **settings["s3"])
    hub = HttpConnector(settings["upstream"], name="hub")
    upstream: Any = Slow(hub) if settings.get("slow") else hub
    results: dict[str, str] = {}

    async def one(digest: str) -> None:
        stream = await fetch(
            coordinator, store, upstream, settings["repository"], Digest.parse(digest)
        )
        hasher = hashlib.sha256()
        async with stream:
            async for chunk in stream:
                hasher.update(chunk)
        results[digest] = f"sha256:{hasher.hexdigest()}"

    async with coordinator, store, hub, anyio.create_task_group() as tg:
        for digest in settings["digests"]:
            tg.start_soon(one, digest)
    for digest in settings["digests"]:
        print(digest, results[digest], flush=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
