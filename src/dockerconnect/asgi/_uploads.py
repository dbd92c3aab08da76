"""Upload sessions that live in the store directory, shared by every server on it.

A session is one file, ``<directory>/<repository key>/<id>``, holding the
bytes received so far; its size is the upload's offset and its modification
time says when it was last used. Nothing about a session lives only in
memory, so:

- sessions survive a restart, and any server over the same directory can
  continue a session another one started;
- a server holds an exclusive ``flock`` on a session's file while it
  changes it (a ``PATCH`` or the final ``PUT``), which serialises writers
  across processes;
- a session is *dead* once it has been untouched for ``ttl`` seconds and
  nobody holds its lock; only dead sessions are ever removed (issue 11,
  finding 7: a starting server never wipes another's live uploads).

Open sessions are capped per repository and in total (``TooManySessions``,
429 ``TOOMANYREQUESTS``). Processes count on their own, so the caps can be
exceeded by a few sessions when several servers start sessions at the same
instant. A failing write (a full disk) leaves the file exactly as long as
the bytes counted before it and raises ``StorageError``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from dockerconnect.asgi._errors import TooManySessions
from dockerconnect.errors import BlobUploadUnknown, StorageError

__all__ = ["CHUNK_SIZE", "UPLOAD_TTL", "Upload", "UploadSessions"]

#: Bytes per file write and per body chunk read: large enough that a thread
#: hop is cheap, small enough that memory stays bounded.
CHUNK_SIZE = 1024 * 1024
#: Upload sessions untouched for this long are dead and may be removed.
UPLOAD_TTL = 24 * 3600.0
_ID_CHARS = frozenset("0123456789abcdef")
_LOCK_POLL = 0.02


def _valid_id(session_id: str) -> bool:
    return len(session_id) == 32 and set(session_id) <= _ID_CHARS


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Upload:
    """One session: its id, repository and file. ``size`` is the offset when
    last looked at (exact while the session is locked)."""

    def __init__(self, session_id: str, repository: str, path: Path, size: int = 0) -> None:
        self.id = session_id
        self.repository = repository
        self.path = path
        self.size = size
        self._fd: int | None = None


class UploadSessions:
    """Upload sessions under ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_sessions: int = 1000,
        max_per_repository: int = 100,
        ttl: float = UPLOAD_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sessions < 1 or max_per_repository < 1:
            raise ValueError("upload session caps must be at least 1")
        self.directory = Path(directory)
        self.max_sessions = max_sessions
        self.max_per_repository = max_per_repository
        self.ttl = ttl
        self._clock = clock
        self._locks: dict[str, anyio.Lock] = {}
        self._last_sweep = -float("inf")

    def _repository_dir(self, repository: str) -> Path:
        key = hashlib.sha256(repository.encode()).hexdigest()[:32]
        return self.directory / key

    def _storage_error(self, exc: OSError, what: str) -> StorageError:
        error = StorageError(f"could not {what} in {self.directory}: {exc.strerror or exc}")
        error.__cause__ = exc
        return error

    # -- sessions ----------------------------------------------------------------

    async def new(self, repository: str) -> Upload:
        """Start a session, removing dead ones first (at most once a minute)."""
        now = self._clock()
        if now - self._last_sweep >= min(60.0, self.ttl):
            self._last_sweep = now
            await self.sweep()
        session_id = secrets.token_hex(16)
        path = self._repository_dir(repository) / session_id
        try:
            await anyio.to_thread.run_sync(self._create, repository, path)
        except OSError as exc:
            raise self._storage_error(exc, "start an upload session") from exc
        return Upload(session_id, repository, path)

    def _create(self, repository: str, path: Path) -> None:
        total, here = self._count(path.parent)
        if here >= self.max_per_repository:
            raise TooManySessions(
                f"{here} upload sessions are open for {repository!r}, the most allowed "
                f"({self.max_per_repository}); finish or cancel one first",
                repository=repository,
            )
        if total >= self.max_sessions:
            raise TooManySessions(
                f"{total} upload sessions are open, the most this server allows "
                f"({self.max_sessions}); try again later",
                repository=repository,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=False)

    def _count(self, repository_dir: Path) -> tuple[int, int]:
        total = here = 0
        if not self.directory.is_dir():
            return 0, 0
        with os.scandir(self.directory) as repositories:
            for entry in repositories:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                count = sum(1 for name in os.listdir(entry.path) if _valid_id(name))
                total += count
                if entry.name == repository_dir.name:
                    here = count
        return total, here

    async def get(self, repository: str, session_id: str) -> Upload:
        """The session ``session_id`` of ``repository``; ``BlobUploadUnknown`` if
        there is none (or it belongs to another repository)."""
        if _valid_id(session_id):
            path = self._repository_dir(repository) / session_id
            try:
                stat = await anyio.to_thread.run_sync(os.stat, path)
            except FileNotFoundError:
                pass
            else:
                return Upload(session_id, repository, path, stat.st_size)
        raise BlobUploadUnknown(
            f"no upload {session_id!r} in progress for {repository!r}", repository=repository
        )

    @asynccontextmanager
    async def locked(self, upload: Upload) -> AsyncIterator[Upload]:
        """Hold ``upload`` exclusively (in this process and across processes).

        Inside, ``upload.size`` is exact. ``BlobUploadUnknown`` if the session
        ended while we waited.
        """
        lock = self._locks.setdefault(upload.id, anyio.Lock())
        async with lock:
            try:
                fd = await self._flock(upload)
                upload._fd = fd
                try:
                    yield upload
                finally:
                    upload._fd = None
                    os.close(fd)
            finally:
                if not lock.statistics().tasks_waiting:
                    self._locks.pop(upload.id, None)

    async def _flock(self, upload: Upload) -> int:
        gone = BlobUploadUnknown(
            f"upload {upload.id!r} ended meanwhile", repository=upload.repository
        )
        try:
            fd = os.open(upload.path, os.O_RDWR)
        except FileNotFoundError:
            raise gone from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await anyio.sleep(_LOCK_POLL)
            # Removed (and perhaps recreated) while we waited for the lock?
            try:
                same = os.stat(upload.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise gone
            upload.size = os.fstat(fd).st_size
            return fd
        except BaseException:
            os.close(fd)
            raise

    async def append(self, upload: Upload, chunks: AsyncIterator[bytes]) -> None:
        """Append a request body to a locked session, in writes of ~1 MiB.

        On any failure the file is cut back to the bytes counted, so a client
        that resumes from the reported ``Range`` stays consistent; an
        ``OSError`` becomes ``StorageError``.
        """
        fd = upload._fd
        if fd is None:
            raise RuntimeError("append needs the session locked")
        pending: list[bytes] = []
        buffered = 0
        try:
            async for chunk in chunks:
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= CHUNK_SIZE:
                    await anyio.to_thread.run_sync(_write_all, fd, b"".join(pending), upload.size)
                    upload.size += buffered
                    pending, buffered = [], 0
            if pending:
                await anyio.to_thread.run_sync(_write_all, fd, b"".join(pending), upload.size)
                upload.size += buffered
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(os.ftruncate, fd, upload.size)
            if isinstance(exc, OSError):
                raise self._storage_error(exc, "write an upload chunk") from exc
            raise
        else:
            await anyio.to_thread.run_sync(os.utime, fd)

    async def read(self, upload: Upload) -> AsyncGenerator[bytes, None]:
        """The session's bytes so far, in chunks of at most 1 MiB."""
        async with await anyio.open_file(upload.path, "rb") as file:
            while chunk := await file.read(CHUNK_SIZE):
                yield chunk

    async def discard(self, upload: Upload) -> None:
        """End a session (its file is removed)."""
        await anyio.to_thread.run_sync(lambda: upload.path.unlink(missing_ok=True))

    # -- housekeeping ------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove dead sessions (untouched for ``ttl`` and unlocked); how many."""
        return await anyio.to_thread.run_sync(self._sweep, self._clock() - self.ttl)

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        if not self.directory.is_dir():
            return 0
        for repository_dir in self.directory.iterdir():
            if not repository_dir.is_dir():
                continue
            for path in repository_dir.iterdir():
                if _valid_id(path.name) and self._remove_if_dead(path, cutoff):
                    removed += 1
        return removed

    @staticmethod
    def _remove_if_dead(path: Path, cutoff: float) -> bool:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # someone is writing to it right now: alive
            if os.fstat(fd).st_mtime >= cutoff:
                return False
            try:
                path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                return False
            return True
        finally:
            os.close(fd)
