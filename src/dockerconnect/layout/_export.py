"""``export_layout``: images of a registry written as an OCI image layout.

Crash and interruption safety
-----------------------------

The layout never lies, whenever the export stops (cancelled, killed, a full
disk):

1. ``oci-layout`` is written first; a directory without one is not a layout.
2. Each blob is written to ``.dockerconnect-tmp/`` inside the layout, verified
   against its digest and size, ``fsync``-ed and renamed to
   ``blobs/<algorithm>/<hex>``: a blob's name only ever holds its exact bytes.
   A blob held by a :class:`~dockerconnect.FilesystemBlobStore` is hard-linked
   instead (the store only publishes verified bytes), falling back to a copy
   where the filesystem refuses the link (another device, no hard links).
3. Manifests are written after every blob, children before their index.
4. ``index.json`` is replaced last, atomically (temporary file, ``fsync``,
   rename, ``fsync`` of the directory). Until then the previous ``index.json``
   (if any) still names only content that is there.

A rerun into the same directory is a resume: a blob already present is
skipped once its size and digest check out (a hard link to the store's own
file is skipped without reading it), and one that does not is written again.
``index.json`` keeps the entries it had, except those whose ``ref.name`` the
export writes again. One export into a directory at a time.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import attrs

from dockerconnect._descriptor import Descriptor, Platform
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._filesystem import FilesystemBlobStore
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import Registry
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect.errors import (
    DigestMismatch,
    InvalidInput,
    ManifestUnknown,
)
from dockerconnect.layout._files import (
    TMP_DIR,
    discard,
    flush_and_close,
    make_dirs,
    prepare,
    present,
    publish,
    run,
    write_index,
)
from dockerconnect.layout._format import BLOBS_DIR, REF_NAME

__all__ = ["ExportEvent", "ExportReport", "export_layout"]


#: Blobs written at once: enough to overlap hashing, network and disk.
CONCURRENCY: Final = 4

How = Literal["copied", "linked", "skipped"]


@attrs.frozen(slots=True)
class ExportEvent:
    """One step of an export, passed to its ``progress`` callback.

    ``kind`` is one of:

    - ``"planned"``: every manifest is known; ``total_bytes`` and
      ``total_blobs`` are what the export will bring into the layout;
    - ``"bytes"``: ``size`` more bytes of blob ``digest`` were written;
    - ``"blob"``: blob ``digest`` (``size`` bytes) is in place, ``how``
      (``"copied"``, ``"linked"`` or ``"skipped"``, already there);
    - ``"manifest"``: manifest ``digest`` is in place;
    - ``"done"``: ``index.json`` is written.

    ``done_bytes`` counts blob bytes in place so far, however they got there.
    """

    kind: Literal["planned", "bytes", "blob", "manifest", "done"]
    digest: Digest | None = None
    size: int = 0
    how: How | None = None
    done_bytes: int = 0
    total_bytes: int = 0
    total_blobs: int = 0


@attrs.frozen(slots=True)
class ExportReport:
    """What an export did.

    ``entries`` are the ``index.json`` descriptors it wrote (tagged images
    first, then referrers). ``copied``, ``linked`` and ``skipped`` count blobs
    by how they got into the layout; ``bytes_written`` counts the bytes
    actually written (copies, manifests, ``index.json``), ``bytes_linked``
    those hard-linked.
    """

    path: Path
    entries: tuple[Descriptor, ...]
    manifests: int
    copied: int
    linked: int
    skipped: int
    bytes_written: int
    bytes_linked: int
    bytes_skipped: int


@attrs.define
class _Plan:
    """Everything to write, collected before the first byte is."""

    manifests: dict[Digest, Manifest] = attrs.field(factory=dict)
    order: list[Digest] = attrs.field(factory=list)  # children before parents
    blobs: dict[Digest, Descriptor] = attrs.field(factory=dict)
    entries: list[Descriptor] = attrs.field(factory=list)
    referrers: dict[Digest, Descriptor] = attrs.field(factory=dict)


@attrs.define
class _Counts:
    copied: int = 0
    linked: int = 0
    skipped: int = 0
    bytes_written: int = 0
    bytes_linked: int = 0
    bytes_skipped: int = 0
    done_bytes: int = 0
    total_bytes: int = 0
    total_blobs: int = 0


async def export_layout(
    registry: Registry,
    repository: str,
    references: Iterable[str],
    path: str | os.PathLike[str],
    *,
    referrers: bool = False,
    platforms: Sequence[str] | None = None,
    progress: Callable[[ExportEvent], None] | None = None,
    hard_links: bool = True,
    qualified: bool = False,
) -> ExportReport:
    """Write ``references`` of ``repository`` as an OCI image layout at ``path``.

    ``references`` are tags or digests. A tag is written as an ``index.json``
    entry named by its ``org.opencontainers.image.ref.name``: the bare tag
    (what ``skopeo … oci:DIR:TAG`` reads), or ``repository:tag`` with
    ``qualified=True``. A digest is written as an entry without a name.

    An index is written with every child, or with the children matching
    ``platforms`` (``"linux/arm64/v8"``…) only; its own bytes, and so its
    digest, are unchanged. With ``referrers``, each manifest's referrers
    (through ``registry.referrers`` if the registry has it, and through the
    ``<algorithm>-<hex>`` tag schema), and theirs, are written too, as
    unnamed entries of ``index.json``.

    With ``hard_links``, blobs held by the registry's own ``blobs`` store, when
    it is a :class:`~dockerconnect.FilesystemBlobStore` (as a
    :class:`~dockerconnect.Resolver`'s may be), are hard-linked where the
    filesystem allows; the others are copied. ``progress`` is called with an
    :class:`ExportEvent` at each step. See the module documentation for what
    an interrupted export leaves and how a rerun resumes. Raises what the
    registry raises (``ManifestUnknown``, ``BlobUnknown``, ``UpstreamError``),
    ``DigestMismatch`` for content that does not match its digest, and
    ``StorageError`` when the layout cannot be written.
    """
    validate_repository(repository)
    refs = [_reference(r) for r in ([references] if isinstance(references, str) else references)]
    if not refs:
        raise InvalidInput("export_layout needs at least one tag or digest")
    wanted = tuple(Platform.parse(p) for p in platforms) if platforms is not None else None
    root = Path(await anyio.Path(os.fspath(path)).absolute())
    # Registry has no "blobs"; a Resolver does. Until a store offers a public
    # "file of a blob", a FilesystemBlobStore's blob_path is the one way in.
    held = getattr(registry, "blobs", None) if hard_links else None
    store = held if isinstance(held, FilesystemBlobStore) else None
    emit = progress if progress is not None else _ignore
    plan = await _planned(registry, repository, refs, wanted, referrers, qualified)
    # Only now, with every manifest known, is anything written.
    return await _write(registry, repository, root, plan, store, emit)


async def _planned(
    registry: Registry,
    repository: str,
    refs: Sequence[str | Digest],
    wanted: tuple[Platform, ...] | None,
    referrers: bool,
    qualified: bool,
) -> _Plan:
    """Every manifest and blob the export writes, and its index entries; nothing written."""
    plan = _Plan()
    for ref in refs:
        manifest = await registry.get_manifest(repository, str(ref))
        await _collect(registry, repository, manifest, wanted, plan)
        entry = _entry(manifest, repository, ref, qualified)
        if entry not in plan.entries:  # the same reference twice is one entry
            plan.entries.append(entry)
    if referrers:
        await _collect_referrers(registry, repository, wanted, plan)
    return plan


async def _write(
    registry: Registry,
    repository: str,
    root: Path,
    plan: _Plan,
    store: FilesystemBlobStore | None,
    emit: Callable[[ExportEvent], None],
) -> ExportReport:
    """Blobs first, then manifests, then ``index.json``: a layout that never lies."""
    existing = await run("prepare the layout", prepare, root)
    counts = _Counts(total_bytes=sum(d.size for d in plan.blobs.values()))
    counts.total_blobs = len(plan.blobs)
    emit(ExportEvent("planned", total_bytes=counts.total_bytes, total_blobs=counts.total_blobs))
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    writer = _Writer(root, registry, repository, store, counts, emit)
    await _all(writer.blob, plan.blobs.values(), limiter)
    for digest in plan.order:
        data = plan.manifests[digest].data
        counts.bytes_written += await run("write a manifest", writer.write_small, digest, data)
        emit(ExportEvent("manifest", digest, len(data), done_bytes=counts.done_bytes))
    entries = (*plan.entries, *plan.referrers.values())
    counts.bytes_written += await run("write index.json", write_index, root, existing, entries)
    emit(ExportEvent("done", done_bytes=counts.done_bytes, total_bytes=counts.total_bytes))
    return ExportReport(
        path=root,
        entries=entries,
        manifests=len(plan.order),
        copied=counts.copied,
        linked=counts.linked,
        skipped=counts.skipped,
        bytes_written=counts.bytes_written,
        bytes_linked=counts.bytes_linked,
        bytes_skipped=counts.bytes_skipped,
    )


async def _all(
    fn: Callable[[Descriptor, anyio.CapacityLimiter], Awaitable[None]],
    items: Iterable[Descriptor],
    limiter: anyio.CapacityLimiter,
) -> None:
    """``fn(item, limiter)`` for every item at once; the first failure stops the
    others and is raised as itself (not in an exception group)."""
    failed: list[Exception] = []

    async def one(item: Descriptor, scope: anyio.CancelScope) -> None:
        try:
            await fn(item, limiter)
        except Exception as exc:
            if not failed:
                failed.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item, tg.cancel_scope)
    if failed:
        raise failed[0]


def _ignore(event: ExportEvent) -> None:
    return None


def _reference(reference: str) -> Digest | str:
    if not isinstance(reference, str):
        raise InvalidInput(f"reference must be a string, not {type(reference).__name__}")
    if ":" in reference:
        digest = Digest.parse(reference)
        digest.hasher()  # Unsupported now, before any I/O
        return digest
    return validate_tag(reference)


def _entry(manifest: Manifest, repository: str, ref: Digest | str, qualified: bool) -> Descriptor:
    annotations = None
    if isinstance(ref, str):
        annotations = {REF_NAME: f"{repository}:{ref}" if qualified else ref}
    return Descriptor(
        manifest.media_type,
        manifest.digest,
        manifest.size,
        annotations=annotations,
        artifact_type=manifest.artifact_type,
    )


# -- planning ------------------------------------------------------------------


async def _collect(
    registry: Registry,
    repository: str,
    manifest: Manifest,
    wanted: tuple[Platform, ...] | None,
    plan: _Plan,
) -> None:
    """Add ``manifest`` and everything it needs to ``plan``, children first."""
    if manifest.digest in plan.manifests:
        return
    if manifest.is_index:
        for child in manifest.manifests:
            if wanted is not None and not (
                child.platform is not None and any(child.platform.matches(p) for p in wanted)
            ):
                continue
            await _collect(
                registry, repository, await _fetch(registry, repository, child), wanted, plan
            )
    else:
        for blob in manifest.blobs():
            plan.blobs.setdefault(blob.digest, blob)
    plan.manifests[manifest.digest] = manifest
    plan.order.append(manifest.digest)


async def _fetch(registry: Registry, repository: str, descriptor: Descriptor) -> Manifest:
    manifest = await registry.get_manifest(repository, str(descriptor.digest))
    if manifest.digest != descriptor.digest:
        raise DigestMismatch(
            f"manifest {descriptor.digest} came back as {manifest.digest}",
            repository=repository,
            digest=descriptor.digest,
        )
    return manifest


async def _collect_referrers(
    registry: Registry, repository: str, wanted: tuple[Platform, ...] | None, plan: _Plan
) -> None:
    """Add the referrers of every planned manifest, and theirs, to ``plan``."""
    asked: set[Digest] = set()
    while pending := [d for d in plan.order if d not in asked]:
        for digest in pending:
            asked.add(digest)
            for found in await _referrers_of(registry, repository, digest):
                if found.digest in plan.manifests:
                    continue
                await _collect(
                    registry, repository, await _fetch(registry, repository, found), wanted, plan
                )
                manifest = plan.manifests[found.digest]
                plan.referrers[found.digest] = Descriptor(
                    manifest.media_type,
                    manifest.digest,
                    manifest.size,
                    annotations=found.annotations,
                    artifact_type=found.artifact_type,
                )


async def _referrers_of(registry: Registry, repository: str, digest: Digest) -> list[Descriptor]:
    found: dict[Digest, Descriptor] = {}
    method: Any = getattr(registry, "referrers", None)
    if method is not None:
        for descriptor in await method(repository, digest):
            found.setdefault(descriptor.digest, descriptor)
    try:
        tagged = await registry.get_manifest(repository, f"{digest.algorithm}-{digest.hex}")
    except ManifestUnknown:
        tagged = None
    if tagged is not None and tagged.is_index:
        for descriptor in tagged.manifests:
            found.setdefault(descriptor.digest, descriptor)
    return list(found.values())


# -- writing -------------------------------------------------------------------


class _Writer:
    """Brings blobs into the layout: skip, hard-link, or copy and verify."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        repository: str,
        store: FilesystemBlobStore | None,
        counts: _Counts,
        emit: Callable[[ExportEvent], None],
    ) -> None:
        self.root = root
        self.registry = registry
        self.repository = repository
        self.store = store
        self.counts = counts
        self.emit = emit

    def final(self, digest: Digest) -> Path:
        return self.root / BLOBS_DIR / digest.algorithm / digest.hex

    async def blob(self, descriptor: Descriptor, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            how = await self._place(descriptor)
        counts = self.counts
        counts.done_bytes += descriptor.size
        if how == "skipped":
            counts.skipped += 1
            counts.bytes_skipped += descriptor.size
        elif how == "linked":
            counts.linked += 1
            counts.bytes_linked += descriptor.size
        else:
            counts.copied += 1
        self.emit(
            ExportEvent(
                "blob",
                descriptor.digest,
                descriptor.size,
                how,
                done_bytes=counts.done_bytes,
                total_bytes=counts.total_bytes,
                total_blobs=counts.total_blobs,
            )
        )

    async def _place(self, descriptor: Descriptor) -> How:
        digest, final = descriptor.digest, self.final(descriptor.digest)
        source = self._store_file(digest)
        if await run("check a blob", present, final, descriptor, source):
            return "skipped"
        if source is not None and await run("link a blob", self._link, source, final):
            return "linked"
        await self._copy(descriptor, final)
        return "copied"

    def _store_file(self, digest: Digest) -> Path | None:
        if self.store is None:
            return None
        try:
            return self.store.blob_path(digest)
        except InvalidInput:
            return None

    def _link(self, source: Path, final: Path) -> bool:
        """Hard-link the store's file into place; ``False`` where links do not work."""
        temp = self._temp()
        try:
            os.link(source, temp)
        except FileNotFoundError:
            return False  # not in the store (yet): copy through the registry
        except OSError:
            return False  # EXDEV, EPERM, EMLINK…: the filesystem will not link
        make_dirs(final.parent)
        os.replace(temp, final)
        return True

    def _temp(self) -> Path:
        return self.root / TMP_DIR / f"{secrets.token_hex(16)}.tmp"

    async def _copy(self, descriptor: Descriptor, final: Path) -> None:
        verifier = DigestVerifier(descriptor.digest, descriptor.size)
        temp = self._temp()
        file = await run("create a blob", open, temp, "wb")
        try:
            async with await self.registry.open_blob(self.repository, descriptor.digest) as stream:
                async for chunk in stream:
                    await verifier.aupdate(chunk)
                    await run("write a blob", file.write, chunk)
                    self.counts.bytes_written += len(chunk)
                    self.emit(ExportEvent("bytes", descriptor.digest, len(chunk)))
            verifier.verify()
            await run("write a blob", flush_and_close, file)
            await run("publish a blob", publish, temp, final)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(discard, file, temp)
            raise

    def write_small(self, digest: Digest, data: bytes) -> int:
        """Write a manifest's bytes under its digest (blocking); bytes written."""
        final = self.final(digest)
        try:
            if final.read_bytes() == data:
                return 0
        except FileNotFoundError:
            pass
        temp = self._temp()
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        publish(temp, final)
        return len(data)
