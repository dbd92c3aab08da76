"""The filesystem stores' ground floor: one root directory and crash-safe file primitives.

Everything here is blocking and runs in worker threads (:func:`run`), except
:class:`Root`'s constructor. The rules the stores build on (write to
``tmp/``, ``fsync``, rename, ``fsync`` the directory; ``flock`` on temporary
files so live writers of other processes are left alone) are described in
:mod:`dockerconnect._filesystem`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread

from dockerconnect.errors import InvalidInput, StorageError

__all__ = [
    "LOCK_SUFFIX",
    "O_BINARY",
    "TMP_DIR",
    "Root",
    "discard",
    "fsync_dir",
    "locked",
    "make_dirs",
    "read_or_none",
    "run",
    "write_all",
]
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    flock_nowait: Callable[[int], bool] | None = None
    flock_wait: Callable[[int], None] | None = None
else:

    def _flock_wait_posix(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    flock_wait = _flock_wait_posix

    def _flock_nowait_posix(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    flock_nowait = _flock_nowait_posix

T = TypeVar("T")

TMP_DIR: Final = "tmp"
TMP_SUFFIX: Final = ".tmp"
LOCK_SUFFIX: Final = ".lock"

O_BINARY: Final = getattr(os, "O_BINARY", 0)


class Root:
    """A store's root directory and the crash-safe file primitives both stores use."""

    __slots__ = ("path", "tmp")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(root)).absolute()
        self.tmp = str(self.path / TMP_DIR)
        try:
            os.makedirs(self.tmp, exist_ok=True)
            remove_leftovers(self.tmp)
        except OSError as exc:
            # Built by whoever configures the store, not by a client's request:
            # the path is what they need to fix it.
            raise StorageError(f"could not open store root {self.path}: {reason(exc)}") from exc

    def join(self, *parts: str) -> str:
        """``root/parts…``; refuses any result outside the root.

        Callers pass validated names only, so a refusal here means a
        validation rule and this layout disagree: fail closed.
        """
        path = os.path.normpath(os.path.join(self.path, *parts))
        if os.path.commonpath([self.path, path]) != str(self.path) or path == str(self.path):
            raise InvalidInput(f"path {os.path.join(*parts)!r} would leave the store root")
        return path

    def create_temp(self) -> tuple[int, str]:
        """A new, locked, empty temporary file: ``(fd, path)``."""
        while True:
            path = os.path.join(self.tmp, secrets.token_hex(16) + TMP_SUFFIX)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_BINARY
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                # Someone removed tmp/ under us (by hand); recreate it.
                os.makedirs(self.tmp, exist_ok=True)
                continue
            # Between open and lock another instance's clean-up may lock and
            # unlink the new file: if the lock fails, or the name no longer
            # leads to our file, start over with a fresh name.
            if flock_nowait is not None and not flock_nowait(fd):
                os.close(fd)
                continue
            if not same_file(path, fd):
                os.close(fd)
                continue
            return fd, path

    def publish(
        self, fd: int, temp: str, final: str, *, replace: bool, synced: bool = False
    ) -> None:
        """Make the temporary file ``temp`` (open as ``fd``) visible as ``final``.

        ``fsync`` before the rename, so a crash never shows a name with
        partial content; ``fsync`` the directory after, so the rename
        persists. With ``replace=False`` an existing ``final`` is kept (the
        content is the same, by its digest) and ``temp`` is removed. Closes
        ``fd`` in every case. ``synced``: ``fd`` was ``fsync``-ed already.
        """
        try:
            parent = os.path.dirname(final)
            if not replace and os.path.exists(final):
                os.unlink(temp)
            else:
                if not synced:
                    os.fsync(fd)
                make_dirs(parent)
                os.replace(temp, final)
                fsync_dir(parent)
        except BaseException:
            discard(fd, temp)
            raise
        os.close(fd)

    def write_file(self, final: str, data: bytes) -> None:
        """Atomically replace ``final`` with ``data``."""
        fd, temp = self.create_temp()
        try:
            write_all(fd, data)
        except BaseException:
            discard(fd, temp)
            raise
        self.publish(fd, temp, final, replace=True)

    def remove(self, path: str) -> bool:
        """Remove the file ``path``; ``False`` if it was not there."""
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        fsync_dir(os.path.dirname(path))
        return True


# The blocking work below runs in worker threads.


async def run(what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` in a worker thread, ``OSError`` as ``StorageError``."""
    try:
        if kwargs:
            return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))
        return await anyio.to_thread.run_sync(func, *args)
    except OSError as exc:
        raise StorageError(f"could not {what}: {reason(exc)}") from exc


def reason(exc: OSError) -> str:
    # The message may reach an HTTP client: name the failure, not the paths.
    return exc.strerror or type(exc).__name__


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def discard(fd: int, temp: str) -> None:
    # Best effort: a failure here must not hide the error that led to the
    # discard, and the next store opened over this root removes what is left.
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        os.unlink(temp)
    except OSError:
        pass


def same_file(path: str, fd: int) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def remove_leftovers(tmp: str) -> None:
    """Remove every file in ``tmp`` that no live writer holds."""
    for entry in os.scandir(tmp):
        if not entry.is_file(follow_symlinks=False):
            continue
        if flock_nowait is None:
            try:
                os.unlink(entry.path)
            except (FileNotFoundError, PermissionError):
                pass
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | O_BINARY)
        except FileNotFoundError:
            continue
        try:
            if flock_nowait(fd) and same_file(entry.path, fd):
                os.unlink(entry.path)
        finally:
            os.close(fd)


def make_dirs(path: str) -> None:
    """``os.makedirs``, ``fsync``-ing each parent that gained an entry."""
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))


def fsync_dir(path: str) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened elsewhere
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (created if missing).

    Lock files are never removed: removing one races with a process about to
    lock it. Without ``fcntl`` (Windows) this only creates the file.
    """
    make_dirs(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_BINARY, 0o644)
    try:
        if flock_wait is not None:
            flock_wait(fd)
        yield
    finally:
        os.close(fd)
