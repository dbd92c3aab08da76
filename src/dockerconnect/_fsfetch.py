"""Fetches in progress under a filesystem store root, shared by every process over it.

On-disk layout, beside the stores' (see :mod:`dockerconnect._filesystem`)::

    <root>/fetching/<algorithm>/<hex>           a blob being fetched from upstream:
                                                a 256-byte header line, then its bytes
    <root>/fetching/<algorithm>/<hex>.followed  "another process follows": copy the bytes here

The process fetching a blob holds an exclusive ``flock`` on the blob's
in-progress file for as long as it fetches; the kernel drops the lock when
that process dies, however it dies. Every other process over the same root
that wants the blob opens the same file, fails to take the lock, and follows:
it leaves a ``.followed`` mark, reads the header (the blob's size and the
connector it comes from) and then the bytes as the holder appends them. A
holder writes the header with its first bytes, and copies its bytes into the
file only once it sees the mark, so a fetch nobody follows writes nothing to
it (no thread hop, no disk work on the client's critical path). A follower
waits until the header is there. A follower that finds the lock free has
outlived the holder:

- the name no longer leads to the file it holds open: the holder ended
  cleanly (it removes the name before letting go) and either committed the
  blob to the store or gave up;
- the name still leads to it: the holder died mid-fetch. The follower now
  holds the lock, so it is the holder, and the bytes already in the file are
  a prefix it resumes from with a range request instead of fetching again.

A prefix is only ever a head start: the new holder hashes it into a fresh
cache writer, and the blob is published only if the whole matches its digest.
A prefix that does not (a machine that crashed before the page cache reached
the disk) fails that one fetch, whose holder removes the file, so the next
one starts from byte 0.

Everything here is blocking and runs in worker threads; the classes are
driven by :mod:`dockerconnect._resolve.shared`.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Final

from dockerconnect._digest import Digest
from dockerconnect._fsroot import O_BINARY, flock_nowait, make_dirs, run, same_file, write_all
from dockerconnect.errors import StorageError

__all__ = ["FETCHING_DIR", "HEADER_SIZE", "FetchFile", "FilesystemFetches"]

FETCHING_DIR: Final = "fetching"
FOLLOWED_SUFFIX: Final = ".followed"
#: The header line: ``{"size": N, "source": "..."}`` padded with spaces to this length.
HEADER_SIZE: Final = 256


class FilesystemFetches:
    """The in-progress files of one store root: who fetches each blob, and its bytes so far."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, digest: Digest) -> str:
        """Where ``digest``'s in-progress file lives (whether or not it is there)."""
        return os.path.join(self.root, FETCHING_DIR, digest.algorithm, digest.hex)

    async def open(self, digest: Digest) -> FetchFile:
        """The blob's in-progress file, created if missing, held if nobody holds it."""
        return await run("open fetch in progress", self._open, digest)

    def _open(self, digest: Digest) -> FetchFile:
        path = self.path(digest)
        make_dirs(os.path.dirname(path))
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | O_BINARY, 0o644)
            held = flock_nowait is None or flock_nowait(fd)
            if held and not same_file(path, fd):
                # The holder ended and removed the name between our open and
                # our lock: this file is nobody's now; open the name afresh.
                os.close(fd)
                continue
            return FetchFile(digest, path, fd, held=held)


class FetchFile:
    """One process's handle on a blob's in-progress file, as holder or follower.

    ``held`` says whether this handle holds the lock (this process fetches).
    ``prefix`` is how many blob bytes the file held when the lock was taken:
    what a previous holder left behind.
    """

    def __init__(self, digest: Digest, path: str, fd: int, *, held: bool) -> None:
        self.digest = digest
        self.path = path
        self.held = held
        self._fd: int | None = fd
        # Keeps the descriptor open while a worker thread reads through it.
        self._lock = threading.Lock()
        self._written = 0
        self.prefix = 0
        self.header: tuple[int, str] | None = None
        #: ``begin`` chose a header that is not in the file yet: the first
        #: ``write`` puts it there, in the same thread hop as its bytes.
        self._header_due = False
        if held:
            self._took()

    @property
    def written(self) -> int:
        """Blob bytes in the file (what a holder wrote, or the prefix it took)."""
        return self._written

    def _took(self) -> None:
        self.held = True
        self.header = self._read_header()
        self.prefix = max(0, self._length()) if self.header is not None else 0
        self._written = self.prefix

    # -- either side ---------------------------------------------------------

    def _descriptor(self) -> int:
        if self._fd is None:
            raise StorageError("the fetch in progress is closed: read the blob from the store")
        return self._fd

    def _length(self) -> int:
        return os.fstat(self._descriptor()).st_size - HEADER_SIZE

    def _read_header(self) -> tuple[int, str] | None:
        raw = os.pread(self._descriptor(), HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            return None
        try:
            doc = json.loads(raw)
            size, source = doc["size"], doc["source"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(size, int) or size < 0 or not isinstance(source, str):
            return None
        return size, source

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` blob bytes at ``offset`` of what has landed (maybe fewer).

        ``StorageError`` once this handle is closed: the blob is then in the
        store, or the fetch is over.
        """
        return await run("read fetch in progress", self._pread, offset, size)

    def _pread(self, offset: int, size: int) -> bytes:
        with self._lock:
            return os.pread(self._descriptor(), size, HEADER_SIZE + offset)

    async def close(self) -> None:
        """Let go: a holder removes the name first, so followers see it ended."""
        await run("end fetch in progress", self._close)

    def _close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self.held and same_file(self.path, fd):
                    _remove(self.path + FOLLOWED_SUFFIX)
                    os.unlink(self.path)
            finally:
                os.close(fd)

    # -- following -------------------------------------------------------------

    async def announce(self) -> None:
        """Tell the holder that a process follows, so it copies its bytes here."""
        await run("follow fetch in progress", self._announce)

    def _announce(self) -> None:
        os.close(os.open(self.path + FOLLOWED_SUFFIX, os.O_WRONLY | os.O_CREAT | O_BINARY, 0o644))

    async def landed(self) -> tuple[tuple[int, str] | None, int]:
        """The header (once the holder wrote it) and how many blob bytes have landed."""
        return await run("follow fetch in progress", self._landed)

    def _landed(self) -> tuple[tuple[int, str] | None, int]:
        with self._lock:
            header = self._read_header()
            return header, max(0, self._length())

    async def take(self) -> bool | None:
        """Try to take the lock from the holder: ``None`` while it holds it;
        ``True`` if it died mid-fetch (this handle now holds the file and its
        prefix); ``False`` if it ended cleanly (look in the store)."""
        return await run("take over fetch in progress", self._take)

    def _take(self) -> bool | None:
        with self._lock:
            fd = self._descriptor()
            if flock_nowait is not None and not flock_nowait(fd):
                return None
            if not same_file(self.path, fd):
                os.close(fd)
                self._fd = None
                return False
            self._took()
            return True

    # -- holding -------------------------------------------------------------------

    async def begin(self, size: int, source: str) -> None:
        """Say what is being fetched; a prefix left for another size is dropped.

        Nothing is written yet: the header reaches the file with the first
        :meth:`write`, which only a followed fetch makes. Until then the file
        keeps what it held (nothing, or a dead holder's prefix of this very
        blob, which a later holder verifies like any prefix).
        """
        assert self.held
        if self.header is not None and self.header[0] == size and self.prefix:
            return
        self.header, self.prefix, self._written = (size, source), 0, 0
        self._header_due = True

    def _write_header(self, fd: int) -> None:
        assert self.header is not None
        size, source = self.header
        line = json.dumps({"size": size, "source": source}).encode()
        if len(line) >= HEADER_SIZE:
            line = json.dumps({"size": size, "source": source[:64]}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line.ljust(HEADER_SIZE - 1) + b"\n", 0)
        self._header_due = False

    async def followed(self) -> bool:
        """Whether a process has said it follows this fetch."""
        return await run("look at fetch in progress", os.path.exists, self.path + FOLLOWED_SUFFIX)

    async def write(self, data: bytes) -> None:
        """Append the next bytes of the blob, for followers to read as they land."""
        await run("write fetch in progress", self._append, data)

    def _append(self, data: bytes) -> None:
        fd = self._descriptor()
        if self._header_due:
            self._write_header(fd)
        os.lseek(fd, HEADER_SIZE + self._written, os.SEEK_SET)
        write_all(fd, data)
        self._written += len(data)

    def __repr__(self) -> str:
        role = "holding" if self.held else "following"
        return f"FetchFile({self.digest}, {role})"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
