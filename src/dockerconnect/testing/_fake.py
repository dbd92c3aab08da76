"""An in-process fake upstream with fault injection, and a counting wrapper.

``FakeUpstream`` is a real :class:`~dockerconnect.Connector` over in-memory
content; ``faults`` makes it slow, truncating, corrupting, failing or
rate-limited. ``CountingConnector`` wraps any connector and counts what
reached it, so a test can assert "the upstream was asked once" (as
distribution's proxy tests do) without mocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence

import anyio
import attrs

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import Connector
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._registry_connector import matches_patterns
from dockerconnect._stream import BlobStream
from dockerconnect.errors import TooManyRequests, UpstreamError
from dockerconnect.testing._images import RandomImage, RandomIndex

__all__ = ["CountingConnector", "FakeUpstream", "Faults"]


@attrs.define
class Faults:
    """What goes wrong in a :class:`FakeUpstream`; change it at any time.

    - ``fail``: every request raises ``UpstreamError`` ("could not ask").
    - ``rate_limited``: every request raises ``TooManyRequests`` with this
      ``retry_after``.
    - ``delay``: seconds to sleep before each blob chunk (a slow upstream).
    - ``truncate_after`` / ``truncations``: the next ``truncations`` blob
      transfers break with ``UpstreamError`` after ``truncate_after`` bytes.
    - ``corrupt_blobs``: blob bytes are altered (their digest no longer matches).
    - ``corrupt_manifests``: manifests by digest come back with other bytes.
    - ``gate``: blob transfers wait for this event before their first byte
      (lets a test gather many readers onto one fetch).
    - ``ignore_range``: blob transfers asked for an offset start at byte 0
      anyway, as a server that ignores ``Range`` does.
    """

    fail: bool = False
    rate_limited: float | None = None
    delay: float = 0.0
    truncate_after: int | None = None
    truncations: int = 0
    corrupt_blobs: bool = False
    corrupt_manifests: bool = False
    gate: anyio.Event | None = None
    ignore_range: bool = False


class FakeUpstream:
    """An in-memory upstream registry speaking the ``Connector`` protocol.

    ``can_list`` / ``has_catalog`` make ``tags`` / ``repositories`` answer
    ``None`` ("cannot list"), like Docker Hub's missing catalog.
    """

    def __init__(
        self,
        name: str = "upstream",
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        can_list: bool = True,
        has_catalog: bool = True,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.name = name
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.can_list = can_list
        self.has_catalog = has_catalog
        self.chunk_size = chunk_size
        self.faults = Faults()
        self._manifests: dict[tuple[str, Digest], Manifest] = {}
        self._tags: dict[str, dict[str, Digest]] = {}
        self._blobs: dict[Digest, bytes] = {}
        self._blob_repos: dict[Digest, set[str]] = {}

    def __repr__(self) -> str:
        return f"FakeUpstream({self.name!r})"

    # -- filling it ---------------------------------------------------------

    def add(
        self,
        repository: str,
        content: RandomImage | RandomIndex | Manifest,
        *,
        tag: str | None = None,
        blobs: bool = True,
    ) -> Manifest:
        """Add an image or index (with its children and, unless ``blobs=False``,
        its blobs) to ``repository``, optionally tagged."""
        if isinstance(content, Manifest):
            manifest = content
        else:
            manifest = content.manifest
            for m in content.manifests.values():
                self._manifests[(repository, m.digest)] = m
            if blobs:
                for digest, data in content.blobs.items():
                    self.add_blob(repository, data, digest)
        self._manifests[(repository, manifest.digest)] = manifest
        self._tags.setdefault(repository, {})
        if tag is not None:
            self.tag(repository, tag, manifest.digest)
        return manifest

    def add_blob(self, repository: str, data: bytes, digest: Digest | None = None) -> Digest:
        d = digest or Digest.from_bytes(data)
        self._blobs[d] = data
        self._blob_repos.setdefault(d, set()).add(repository)
        self._tags.setdefault(repository, {})
        return d

    def tag(self, repository: str, tag: str, digest: Digest) -> None:
        self._tags.setdefault(repository, {})[tag] = digest

    def untag(self, repository: str, tag: str) -> None:
        self._tags.get(repository, {}).pop(tag, None)

    def remove_blob(self, digest: Digest) -> None:
        self._blobs.pop(digest, None)
        self._blob_repos.pop(digest, None)

    def remove_manifest(self, repository: str, digest: Digest) -> None:
        self._manifests.pop((repository, digest), None)

    # -- the Connector protocol ---------------------------------------------

    def serves(self, repository: str) -> bool:
        return matches_patterns(repository, self.include, self.exclude)

    def _check(self) -> None:
        if self.faults.rate_limited is not None:
            raise TooManyRequests(
                "rate limited", retry_after=self.faults.rate_limited, connector=self.name
            )
        if self.faults.fail:
            raise UpstreamError("upstream is down", connector=self.name)

    def _lookup(self, repository: str, reference: str) -> Manifest | None:
        validate_repository(repository)
        if ":" in reference:
            return self._manifests.get((repository, Digest.parse(reference)))
        digest = self._tags.get(repository, {}).get(validate_tag(reference))
        if digest is None:
            return None
        return self._manifests.get((repository, digest))

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        manifest = self._lookup(repository, reference)
        if manifest is not None and self.faults.corrupt_manifests:
            data = manifest.data + b"\n "
            return Manifest.parse(data, manifest.media_type)
        return manifest

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        manifest = self._lookup(repository, reference)
        return manifest.descriptor() if manifest is not None else None

    def _has_blob(self, repository: str, digest: Digest) -> bool:
        validate_repository(repository)
        digest = Digest.parse(digest)
        return digest in self._blobs and repository in self._blob_repos.get(digest, ())

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        if not self._has_blob(repository, digest):
            return None
        return Descriptor("application/octet-stream", digest, len(self._blobs[digest]))

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        if not self._has_blob(repository, digest):
            return None
        data = self._blobs[digest]
        if self.faults.corrupt_blobs:
            data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
        if self.faults.ignore_range:
            offset = 0
        breaks_at: int | None = None
        if self.faults.truncations > 0 and self.faults.truncate_after is not None:
            self.faults.truncations -= 1
            breaks_at = offset + self.faults.truncate_after
        return BlobStream(
            digest,
            len(self._blobs[digest]),
            self._chunks(data, offset, breaks_at),
            offset=offset,
            source=self.name,
        )

    async def _chunks(
        self, data: bytes, offset: int, breaks_at: int | None
    ) -> AsyncIterator[bytes]:
        gate = self.faults.gate
        if gate is not None:
            await gate.wait()
        pos = offset
        while pos < len(data):
            if self.faults.delay:
                await anyio.sleep(self.faults.delay)
            else:
                await anyio.lowlevel.checkpoint()
            end = min(pos + self.chunk_size, len(data))
            if breaks_at is not None and end > breaks_at:
                if breaks_at > pos:
                    yield data[pos:breaks_at]
                raise UpstreamError(
                    f"connection reset after {breaks_at} bytes", connector=self.name
                )
            yield data[pos:end]
            pos = end

    async def tags(self, repository: str) -> list[str] | None:
        validate_repository(repository)
        await anyio.lowlevel.checkpoint()
        self._check()
        if not self.can_list:
            return None
        return sorted(self._tags.get(repository, {}))

    async def repositories(self) -> list[str] | None:
        await anyio.lowlevel.checkpoint()
        self._check()
        if not self.has_catalog:
            return None
        return sorted(self._tags)


class CountingConnector:
    """Wraps a connector and counts what reached it.

    ``calls[method]`` counts calls by method name; ``opened[digest]`` counts
    blob transfers started; ``bytes_sent`` counts blob bytes streamed out.
    """

    def __init__(self, inner: Connector, *, name: str | None = None) -> None:
        self.inner = inner
        self.name = name if name is not None else inner.name
        self.calls: Counter[str] = Counter()
        self.opened: Counter[Digest] = Counter()
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"CountingConnector({self.inner!r})"

    @property
    def total(self) -> int:
        """Every call that reached the wrapped connector."""
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()
        self.opened.clear()
        self.bytes_sent = 0

    def serves(self, repository: str) -> bool:
        return self.inner.serves(repository)

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        self.calls["get_manifest"] += 1
        return await self.inner.get_manifest(repository, reference, accept=accept)

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        self.calls["head_manifest"] += 1
        return await self.inner.head_manifest(repository, reference)

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        self.calls["stat_blob"] += 1
        return await self.inner.stat_blob(repository, digest)

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        self.calls["open_blob"] += 1
        stream = await self.inner.open_blob(repository, digest, offset=offset)
        if stream is None:
            return None
        self.opened[digest] += 1
        return BlobStream(
            stream.digest,
            stream.size,
            self._count(stream),
            offset=stream.offset,
            source=stream.source,
        )

    async def _count(self, stream: BlobStream) -> AsyncIterator[bytes]:
        async with stream:
            async for chunk in stream:
                self.bytes_sent += len(chunk)
                yield chunk

    async def tags(self, repository: str) -> list[str] | None:
        self.calls["tags"] += 1
        return await self.inner.tags(repository)

    async def repositories(self) -> list[str] | None:
        self.calls["repositories"] += 1
        return await self.inner.repositories()
