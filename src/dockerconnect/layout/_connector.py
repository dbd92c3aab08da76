"""``OciLayoutConnector``: an OCI image layout directory as a connector."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import cachetools

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, Manifest
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect._stream import CHUNK_SIZE, BlobStream
from dockerconnect.errors import (
    DockerConnectError,
    InvalidInput,
    ManifestInvalid,
    RangeInvalid,
    UpstreamDigestMismatch,
)
from dockerconnect.layout._format import (
    INDEX_FILE,
    LAYOUT_FILE,
    MAX_INDEX_SIZE,
    LayoutIndex,
    LayoutInvalid,
    file_size,
    open_blob_file,
    parse_index,
    parse_layout_file,
    read_small,
    translate_os_error,
)

__all__ = ["OciLayoutConnector"]

T = TypeVar("T")

#: How many referenced descriptors (sizes, media types) a connector remembers
#: from the manifests it served, to check the blobs it is asked for next.
HINTS = 16384
_BLOB_MEDIA_TYPE = "application/octet-stream"
_IndexKey = tuple[int, int, int, int]


class OciLayoutConnector:
    """A connector over an OCI image layout directory (image-spec ``image-layout.md``).

    **Tags** are the ``org.opencontainers.image.ref.name`` annotations of the
    layout's ``index.json``:

    - ``repo:tag`` (or ``host/repo:tag``; the host is dropped) is ``tag`` in
      repository ``repo`` only;
    - a bare ``tag`` (what ``skopeo copy … oci:DIR:tag`` writes) is ``tag`` in
      ``repository`` when one is given, else in every repository the
      connector serves.

    Manifests and blobs by digest are served for any repository the connector
    serves: a layout's blobs are content-addressed, like a registry's.
    ``include`` / ``exclude`` are shell-style globs over the repository name
    (``*`` also matches ``/``). ``name`` defaults to ``oci:<directory name>``.

    ``index.json`` is read again whenever it changes (its inode, size, mtime
    or ctime), so an image copied in while the connector serves is seen on
    the next request. Blobs are read in worker threads, from any offset, in
    chunks of :data:`~dockerconnect._stream.CHUNK_SIZE` bytes. Sizes are
    checked against what ``index.json`` and the manifests served so far say;
    digests of manifests are verified here, digests of blobs by the consumer
    (the :class:`~dockerconnect.Resolver` verifies every byte).

    A malformed layout raises :class:`~dockerconnect.layout.LayoutInvalid`
    (an ``UpstreamError``): no ``oci-layout`` file, an ``index.json`` that is
    not a valid index, a blob that ``index.json`` or a served manifest names
    but that is missing or of the wrong size, a path leading out of the
    layout. A manifest whose bytes do not match its digest raises
    :class:`~dockerconnect.errors.UpstreamDigestMismatch`.

    Referrers (:meth:`referrers`) come from the tag schema (an index tagged
    ``<algorithm>-<hex>``) and from a scan of the subjects of the manifests
    ``index.json`` lists.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        repository: str | None = None,
    ) -> None:
        self.root = Path(os.path.realpath(os.fspath(path)))
        self.name = name if name is not None else f"oci:{self.root.name}"
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.repository = validate_repository(repository) if repository is not None else None
        self._key: _IndexKey | None = None
        self._index = LayoutIndex.of(())
        self._hints: cachetools.LRUCache[Digest, Descriptor] = cachetools.LRUCache(HINTS)
        self._subjects: cachetools.LRUCache[Digest, tuple[Digest | None, Descriptor]] = (
            cachetools.LRUCache(HINTS)
        )

    def __repr__(self) -> str:
        return f"OciLayoutConnector({str(self.root)!r}, name={self.name!r})"

    def serves(self, repository: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(repository, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(repository, p) for p in self.exclude)

    # -- index.json -----------------------------------------------------------

    async def index(self) -> LayoutIndex:
        """The layout's ``index.json``, read again if it changed since last time."""
        loaded = await self._thread("read index.json", self._load, self._key)
        if loaded is not None:
            self._key, self._index = loaded
        return self._index

    def _load(self, known: _IndexKey | None) -> tuple[_IndexKey, LayoutIndex] | None:
        index_path = self.root / INDEX_FILE
        try:
            info = os.stat(index_path)
        except FileNotFoundError:
            info = None
        if info is not None:
            key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            if key == known:
                return None
        try:
            layout = (self.root / LAYOUT_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            what = "does not exist" if not self.root.exists() else "has no oci-layout file"
            raise LayoutInvalid(f"{self.root} is not an OCI image layout: it {what}") from None
        parse_layout_file(layout, str(self.root))
        if info is None:
            raise LayoutInvalid(f"{self.root}: the layout has no index.json")
        if info.st_size > MAX_INDEX_SIZE:
            raise LayoutInvalid(f"{self.root}: index.json is larger than {MAX_INDEX_SIZE} bytes")
        return key, parse_index(index_path.read_bytes(), str(self.root))

    def _entry(self, index: LayoutIndex, repository: str, tag: str) -> Descriptor | None:
        entry = index.tags.get((repository, tag))
        if entry is None and self.repository in (None, repository):
            entry = index.tags.get((None, tag))
        return entry

    def _known(self, index: LayoutIndex, digest: Digest) -> Descriptor | None:
        """What ``index.json`` or a manifest served so far says ``digest`` is."""
        entry = index.by_digest.get(digest)
        return entry if entry is not None else self._hints.get(digest)

    # -- manifests ------------------------------------------------------------

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        ref = _reference(repository, reference)
        if not self.serves(repository):
            return None
        index = await self.index()
        if isinstance(ref, Digest):
            known = self._known(index, ref)
            if known is not None and known.media_type not in MANIFEST_MEDIA_TYPES:
                known = None
            return await self._manifest(ref, known)
        entry = self._entry(index, repository, ref)
        return await self._manifest(entry.digest, entry) if entry is not None else None

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        ref = _reference(repository, reference)
        if not self.serves(repository):
            return None
        if isinstance(ref, Digest):
            manifest = await self.get_manifest(repository, reference)
            return manifest.descriptor() if manifest is not None else None
        entry = self._entry(await self.index(), repository, ref)
        if entry is None:
            return None
        size = await self._thread("stat manifest", file_size, self.root, entry.digest)
        self._check_size(entry, size)
        return Descriptor(
            entry.media_type, entry.digest, entry.size, artifact_type=entry.artifact_type
        )

    async def _manifest(self, digest: Digest, known: Descriptor | None) -> Manifest | None:
        """The manifest stored as blob ``digest``.

        ``known``: what ``index.json`` or a parent manifest says it is, which
        makes every problem an error. Without it, a blob that is missing, too
        large or not a manifest is "not there" (a client may ask for any digest).
        """
        read = await self._thread("read manifest", read_small, self.root, digest, MAX_MANIFEST_SIZE)
        data, size = read if read is not None else (None, None)
        if known is None and data is None:
            return None
        if known is not None:
            self._check_size(known, size)
        if data is None:
            raise LayoutInvalid(
                f"{self.root}: manifest {digest} is {size} bytes, more than a manifest may be",
                digest=digest,
                connector=self.name,
            )
        verifier = DigestVerifier(digest)
        verifier.update(data)
        if not verifier.ok:
            raise UpstreamDigestMismatch(
                f"{self.root}: the bytes of manifest {digest} do not match its digest",
                digest=digest,
                connector=self.name,
            )
        try:
            manifest = Manifest.parse(data, known.media_type if known is not None else None)
        except ManifestInvalid as exc:
            if known is None:
                return None
            raise LayoutInvalid(
                f"{self.root}: manifest {digest} is invalid: {exc.message}",
                digest=digest,
                connector=self.name,
            ) from exc
        for reference in manifest.references():
            if reference is not manifest.subject:
                self._hints[reference.digest] = reference
        return manifest

    def _check_size(self, known: Descriptor, size: int | None) -> None:
        if size is None:
            raise LayoutInvalid(
                f"{self.root}: blob {known.digest} is named by the layout but missing",
                digest=known.digest,
                connector=self.name,
            )
        if size != known.size:
            raise LayoutInvalid(
                f"{self.root}: blob {known.digest} is {size} bytes, the layout says {known.size}",
                digest=known.digest,
                connector=self.name,
            )

    # -- blobs ----------------------------------------------------------------

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        validate_repository(repository)
        d = Digest.parse(digest)
        if not self.serves(repository):
            return None
        size = await self._thread("stat blob", file_size, self.root, d)
        known = self._hints.get(d)
        if known is not None:
            self._check_size(known, size)
        if size is None:
            return None
        return Descriptor(_BLOB_MEDIA_TYPE, d, size)

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        validate_repository(repository)
        d = Digest.parse(digest)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RangeInvalid(f"offset must be a non-negative integer, not {offset!r}", digest=d)
        if not self.serves(repository):
            return None
        opened = await self._thread("open blob", open_blob_file, self.root, d)
        known = self._hints.get(d)
        if opened is None:
            if known is not None:
                self._check_size(known, None)
            return None
        fd, size = opened
        try:
            if known is not None:
                self._check_size(known, size)
            if offset > size:
                raise RangeInvalid(f"offset {offset} is past the blob's {size} bytes", digest=d)
        except BaseException:
            os.close(fd)
            raise
        chunks = _FileChunks(self, fd, d, offset, size)
        return BlobStream(d, size, chunks, offset=offset, source=self.name)

    # -- listing --------------------------------------------------------------

    async def tags(self, repository: str) -> list[str] | None:
        validate_repository(repository)
        if not self.serves(repository):
            return None
        index = await self.index()
        bare = self.repository in (None, repository)
        return sorted(
            {tag for repo, tag in index.tags if repo == repository or (repo is None and bare)}
        )

    async def repositories(self) -> list[str] | None:
        """The repositories ``repo:tag`` names and ``repository`` hold.

        ``None`` (cannot list) when the layout has bare tags and no
        ``repository`` was given: they belong to every name.
        """
        index = await self.index()
        names = {repo for repo, _ in index.tags if repo is not None}
        if any(repo is None for repo, _ in index.tags):
            if self.repository is None:
                return None
            names.add(self.repository)
        return sorted(n for n in names if self.serves(n))

    # -- referrers ------------------------------------------------------------

    async def referrers(
        self, repository: str, digest: Digest, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """Manifests in the layout whose ``subject`` is ``digest``.

        From the index tagged ``<algorithm>-<hex>`` (the distribution-spec
        referrers tag schema), then every ``index.json`` entry whose
        ``subject`` is ``digest``; de-duplicated by digest, in that order.
        """
        validate_repository(repository)
        d = Digest.parse(digest)
        if not self.serves(repository):
            return []
        index = await self.index()
        found: dict[Digest, Descriptor] = {}
        entry = self._entry(index, repository, f"{d.algorithm}-{d.hex}")
        if entry is not None:
            tagged = await self._manifest(entry.digest, entry)
            if tagged is not None and tagged.is_index:
                for child in tagged.manifests:
                    found.setdefault(child.digest, child)
        for entry in index.manifests:
            if entry.media_type not in MANIFEST_MEDIA_TYPES:
                continue
            seen = self._subjects.get(entry.digest)
            if seen is None:
                manifest = await self._manifest(entry.digest, entry)
                assert manifest is not None
                subject = manifest.subject.digest if manifest.subject is not None else None
                seen = (subject, _referrer(manifest))
                self._subjects[entry.digest] = seen
            if seen[0] == d:
                found.setdefault(entry.digest, seen[1])
        return [
            r for r in found.values() if artifact_type is None or r.artifact_type == artifact_type
        ]

    # -- plumbing -------------------------------------------------------------

    async def _thread(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread, its errors naming this connector."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except DockerConnectError as exc:
            if exc.connector is None:
                exc.connector = self.name
            raise
        except OSError as exc:
            error = translate_os_error(self.root, what, exc)
            error.connector = self.name
            raise error from exc


class _FileChunks:
    """A blob file read from an offset in worker threads; closes its descriptor."""

    __slots__ = ("_connector", "_digest", "_fd", "_pos", "_size")

    def __init__(
        self, connector: OciLayoutConnector, fd: int, digest: Digest, offset: int, size: int
    ) -> None:
        self._connector = connector
        self._fd: int | None = fd
        self._digest = digest
        self._pos = offset
        self._size = size

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        fd = self._fd
        if fd is None or self._pos >= self._size:
            await self.aclose()
            raise StopAsyncIteration
        want = min(CHUNK_SIZE, self._size - self._pos)
        try:
            data = await self._connector._thread("read blob", os.pread, fd, want, self._pos)
        except BaseException:
            await self.aclose()
            raise
        if not data:
            await self.aclose()
            raise LayoutInvalid(
                f"{self._connector.root}: blob {self._digest} shrank while it was read",
                digest=self._digest,
                connector=self._connector.name,
            )
        self._pos += len(data)
        return data

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _reference(repository: str, reference: str) -> Digest | str:
    """Validate ``repository`` and ``reference`` (a tag or a digest) before any I/O."""
    validate_repository(repository)
    if not isinstance(reference, str):
        raise InvalidInput(f"reference must be a string, not {type(reference).__name__}")
    if ":" in reference:
        return Digest.parse(reference)
    return validate_tag(reference)


def _referrer(manifest: Manifest) -> Descriptor:
    """A referrer's descriptor (distribution-spec "Listing Referrers")."""
    artifact_type = manifest.artifact_type
    if artifact_type is None and manifest.config is not None:
        artifact_type = manifest.config.media_type
    return Descriptor(
        manifest.media_type,
        manifest.digest,
        manifest.size,
        annotations=manifest.annotations,
        artifact_type=artifact_type,
    )
