"""The OCI image layout on disk (image-spec ``image-layout.md``), read and written.

A layout is a directory holding::

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 an image index: the layout's entry points
    blobs/<algorithm>/<hex>    every manifest, config and layer, by digest

Entry points are named by the ``org.opencontainers.image.ref.name``
annotation of their ``index.json`` descriptor (image-spec
``annotations.md``). Tools write it in two forms, and :func:`split_ref_name`
reads both:

- a bare tag, ``v1.0`` (``skopeo copy ... oci:DIR:v1.0``, ``oras``): the
  layout does not say which repository it belongs to;
- a name and a tag, ``repo:v1.0`` or ``example.com/team/repo:v1.0``
  (containerd, ``nerdctl save``): the repository is the name without a leading
  registry host (``team/repo``).

Everything that reads a path from here joins validated digest parts under the
layout's root and refuses a result (after resolving symbolic links) outside
it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._json import JsonInvalid, load_json
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect.errors import DockerConnectError, InvalidInput, ManifestInvalid, UpstreamError

__all__ = [
    "BLOBS_DIR",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MAX_INDEX_SIZE",
    "REF_NAME",
    "LayoutIndex",
    "LayoutInvalid",
    "blob_path",
    "file_size",
    "open_blob_file",
    "parse_index",
    "parse_layout_file",
    "read_small",
    "split_ref_name",
    "translate_os_error",
]

LAYOUT_FILE: Final = "oci-layout"
INDEX_FILE: Final = "index.json"
BLOBS_DIR: Final = "blobs"
LAYOUT_VERSION: Final = "1.0.0"
#: The annotation that names an ``index.json`` entry (image-spec annotations.md).
REF_NAME: Final = "org.opencontainers.image.ref.name"
#: The largest ``index.json`` read: room for tens of thousands of entries.
MAX_INDEX_SIZE: Final = 64 * 1024 * 1024


class LayoutInvalid(UpstreamError):
    """An OCI image layout that breaks image-spec ``image-layout.md``.

    No ``oci-layout`` file, an ``index.json`` that is not a valid index, a
    blob that ``index.json`` or a manifest names but that is missing or of the
    wrong size, or a path that would leave the layout's root. An
    :class:`~dockerconnect.errors.UpstreamError` (the connector could not be
    asked), so a resolver goes on to its next source and never remembers it as
    a miss; ``retryable``, since a layout being copied in may be whole later.
    """


@attrs.frozen(slots=True)
class LayoutIndex:
    """A parsed ``index.json``: every entry, by digest, and the tagged ones by name.

    ``tags`` maps ``(repository, tag)`` to the entry; ``repository`` is
    ``None`` for a bare-tag name. When two entries carry the same name the
    first one wins, as in ``index.json`` order.
    """

    manifests: tuple[Descriptor, ...]
    tags: Mapping[tuple[str | None, str], Descriptor]
    by_digest: Mapping[Digest, Descriptor]

    @classmethod
    def of(cls, manifests: Iterable[Descriptor]) -> LayoutIndex:
        entries = tuple(manifests)
        tags: dict[tuple[str | None, str], Descriptor] = {}
        by_digest: dict[Digest, Descriptor] = {}
        for entry in entries:
            by_digest.setdefault(entry.digest, entry)
            name = entry.annotations.get(REF_NAME) if entry.annotations else None
            split = split_ref_name(name) if name is not None else None
            if split is not None:
                tags.setdefault(split, entry)
        return cls(entries, tags, by_digest)


def split_ref_name(value: str) -> tuple[str | None, str] | None:
    """``(repository, tag)`` named by a ``ref.name`` annotation, or ``None``.

    ``v1`` is ``(None, "v1")``; ``repo:v1`` is ``("repo", "v1")``;
    ``registry.example:5000/team/repo:v1`` is ``("team/repo", "v1")`` (a first
    component with a ``.`` or ``:``, or ``localhost``, is a registry host and
    is dropped). A name pinned by digest (``repo@sha256:…``) or one that is no
    valid tag or repository (``1.0+build``) names no tag: ``None``.
    """
    if "@" in value:
        return None
    name, sep, tag = value.rpartition(":")
    if not sep or "/" in tag:
        return (None, value) if _is_tag(value) else None
    if not name or not _is_tag(tag):
        return None
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        name = rest
    try:
        validate_repository(name)
    except InvalidInput:
        return None
    return name, tag


def _is_tag(value: str) -> bool:
    try:
        validate_tag(value)
    except InvalidInput:
        return False
    return True


def parse_layout_file(data: bytes, where: str) -> str:
    """The ``imageLayoutVersion`` of an ``oci-layout`` file; raises :class:`LayoutInvalid`."""
    try:
        doc = load_json(data)
    except JsonInvalid as exc:
        raise LayoutInvalid(f"{where}: oci-layout is not valid JSON: {exc}") from None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if not isinstance(version, str):
        raise LayoutInvalid(f"{where}: oci-layout has no string 'imageLayoutVersion'")
    if version.split(".")[0] != "1":
        raise LayoutInvalid(f"{where}: unsupported imageLayoutVersion {version!r} (expected 1.x)")
    return version


def parse_index(data: bytes, where: str) -> LayoutIndex:
    """A layout's ``index.json``; raises :class:`LayoutInvalid` naming what is wrong."""
    try:
        doc: Any = load_json(data)
    except JsonInvalid as exc:
        raise LayoutInvalid(f"{where}: index.json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LayoutInvalid(f"{where}: index.json must be a JSON object")
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise LayoutInvalid(f"{where}: index.json 'schemaVersion' must be 2, not {version!r}")
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise LayoutInvalid(f"{where}: index.json needs a 'manifests' list")
    manifests = []
    for i, entry in enumerate(entries):
        try:
            manifests.append(Descriptor.from_dict(entry))
        except ManifestInvalid as exc:
            raise LayoutInvalid(f"{where}: index.json manifests[{i}]: {exc.message}") from None
    return LayoutIndex.of(manifests)


def blob_path(root: Path, digest: Digest) -> str:
    """``root/blobs/<algorithm>/<hex>``, refused (:class:`LayoutInvalid`) if it
    resolves outside ``root``.

    A :class:`~dockerconnect.Digest`'s parts hold no ``/``; symbolic links
    inside the layout are followed only while they stay within it.
    """
    path = os.path.join(root, BLOBS_DIR, digest.algorithm, digest.hex)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != str(root):
        raise LayoutInvalid(f"{root}: blob {digest} leads outside the layout", digest=digest)
    return real


def open_blob_file(root: Path, digest: Digest) -> tuple[int, int] | None:
    """Open a blob for reading: ``(fd, size)``, or ``None`` if it is not there.

    Blocking: call from a worker thread. Anything but a regular file under the
    blob's name is :class:`LayoutInvalid`.
    """
    path = blob_path(root, digest)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LayoutInvalid(f"{root}: blob {digest} is not a regular file", digest=digest)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_small(root: Path, digest: Digest, limit: int) -> tuple[bytes | None, int] | None:
    """``(bytes, size)`` of a blob of at most ``limit`` bytes, ``(None, size)``
    for a larger one, ``None`` if it is not there. Blocking."""
    opened = open_blob_file(root, digest)
    if opened is None:
        return None
    fd, size = opened
    try:
        if size > limit:
            return None, size
        parts = []
        while True:
            chunk = os.read(fd, limit + 1)
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts), size
    finally:
        os.close(fd)


def file_size(root: Path, digest: Digest) -> int | None:
    """The size of a blob's file, or ``None`` if it is not there. Blocking."""
    opened = open_blob_file(root, digest)
    if opened is None:
        return None
    fd, size = opened
    os.close(fd)
    return size


def translate_os_error(root: Path, what: str, exc: OSError) -> DockerConnectError:
    """An ``OSError`` met while reading the layout, as a :class:`LayoutInvalid`."""
    reason = exc.strerror or type(exc).__name__
    return LayoutInvalid(f"{root}: could not {what}: {reason}")
