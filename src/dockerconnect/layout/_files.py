"""The file work of an export: atomic publishing, checks of what is there, ``index.json``.

Blocking functions, called in worker threads through :func:`run`, which turns
``OSError`` into :class:`~dockerconnect.errors.StorageError`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread

from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import DigestVerifier
from dockerconnect._manifest import OCI_INDEX
from dockerconnect.errors import StorageError
from dockerconnect.layout._format import (
    BLOBS_DIR,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    REF_NAME,
    LayoutInvalid,
    parse_index,
    parse_layout_file,
)

__all__ = [
    "TMP_DIR",
    "discard",
    "flush_and_close",
    "fsync_dir",
    "make_dirs",
    "prepare",
    "present",
    "publish",
    "run",
    "same_file",
    "write_index",
]

T = TypeVar("T")

#: Where an export keeps the files it is writing, inside the layout (so a
#: rename into ``blobs/`` never crosses filesystems).
TMP_DIR: Final = ".dockerconnect-tmp"
_HASH_CHUNK: Final = 1024 * 1024


def present(final: Path, descriptor: Descriptor, source: Path | None) -> bool:
    """Whether ``final`` already holds the blob; removes it if it holds other bytes."""
    try:
        info = os.stat(final)
    except FileNotFoundError:
        return False
    if info.st_size == descriptor.size:
        if source is not None and same_file(source, info):
            return True  # our own hard link to the store's verified file
        verifier = DigestVerifier(descriptor.digest, descriptor.size)
        with open(final, "rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                verifier.update(chunk)
        if verifier.ok:
            return True
    os.unlink(final)
    return False


def same_file(path: Path, info: os.stat_result) -> bool:
    try:
        other = os.stat(path)
    except FileNotFoundError:
        return False
    return (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino)


def prepare(root: Path) -> tuple[Descriptor, ...]:
    """Make ``root`` a layout (or check that it is one); the current entries.

    Leftover temporary files of an interrupted export are removed.
    """
    layout = root / LAYOUT_FILE
    if root.is_dir() and any(root.iterdir()) and not layout.exists():
        raise StorageError(
            f"{root} is not empty and not an OCI image layout: export into an empty "
            "directory or an existing layout"
        )
    try:
        existing: tuple[Descriptor, ...] = ()
        if layout.exists():
            parse_layout_file(layout.read_bytes(), str(root))
            index = root / INDEX_FILE
            if index.exists():
                existing = parse_index(index.read_bytes(), str(root)).manifests
    except LayoutInvalid as exc:
        raise StorageError(f"cannot export into {root}: {exc.message}") from exc
    tmp = root / TMP_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp)
    if not layout.exists():
        temp = tmp / "oci-layout.tmp"
        temp.write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        publish(temp, layout)
    return existing


def write_index(root: Path, existing: Sequence[Descriptor], entries: Sequence[Descriptor]) -> int:
    """Replace ``index.json`` atomically: the old entries not renamed, then ``entries``."""
    names = {e.annotations.get(REF_NAME) for e in entries if e.annotations} - {None}
    digests = {e.digest for e in entries}
    kept = []
    for entry in existing:
        name = entry.annotations.get(REF_NAME) if entry.annotations else None
        if name in names or (name is None and entry.digest in digests):
            continue
        kept.append(entry)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [e.to_dict() for e in (*kept, *entries)],
    }
    data = json.dumps(doc, indent=2).encode() + b"\n"
    for directory in (root / BLOBS_DIR).glob("*"):
        fsync_dir(directory)
    temp = root / TMP_DIR / "index.json.tmp"
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    publish(temp, root / INDEX_FILE)
    shutil.rmtree(root / TMP_DIR, ignore_errors=True)
    return len(data)


def publish(temp: Path, final: Path) -> None:
    make_dirs(final.parent)
    os.replace(temp, final)
    fsync_dir(final.parent)


def flush_and_close(file: Any) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def discard(file: Any, temp: Path) -> None:
    file.close()
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass


def make_dirs(path: Path) -> None:
    os.makedirs(path, exist_ok=True)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


async def run(what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; ``OSError`` as ``StorageError``."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        raise StorageError(f"could not {what}: {reason}{where}") from exc
