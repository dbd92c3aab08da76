"""The filesystem stores' usage logs: which blobs and manifests are a cache, and their use.

On disk, beside the blobs (see :mod:`dockerconnect._filesystem`)::

    <root>/usage/<algorithm>/<hex[:2]>/<hex>.json   {"source": "hub" | null, "at": 1700000000.0}
    <root>/usage/<algorithm>/<hex[:2]>.lock         flock: marks and removals of that bucket

A blob's last use is its file's modification time: :meth:`Usage.flush` sets
it with ``os.utime`` (a batch of small metadata writes, never one per warm
read), and every process sharing the root sees it. Marks, flushes, removals
and a commit of an already held blob take the bucket's ``flock``, so a
removal and a racing commit in another process never interleave: the commit
either finds the blob gone and publishes its own copy, or refreshes its time
first, and the removal then sees it as used.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Final, TypeVar

from dockerconnect._digest import Digest
from dockerconnect._fsroot import Root, fsync_dir, locked, read_or_none
from dockerconnect._protocols import CachedBlob, CachedManifest
from dockerconnect._stores import check_source
from dockerconnect.errors import DigestInvalid, StorageError

__all__ = ["USAGE_DIR", "ManifestUsage", "Usage"]

USAGE_DIR: Final = "usage"
#: The per-repository usage directory; "_" keeps it apart from repository names.
USAGE_DIR_PRIVATE: Final = "_usage"
_MARK_SUFFIX: Final = ".json"


class Usage:
    """Marks and uses of the blobs under one root.

    ``touch``, ``pending`` and ``written`` run on the event loop's thread and
    do no I/O; the others block and run in worker threads.
    """

    __slots__ = ("_blob_path", "_busy", "_pending", "_root")

    def __init__(
        self, root: Root, blob_path: Callable[[Digest], str], busy: Counter[Digest]
    ) -> None:
        self._root = root
        self._blob_path = blob_path
        self._busy = busy
        self._pending: dict[Digest, float] = {}

    def bucket_lock(self, digest: Digest) -> str:
        """The lock file of the bucket ``digest`` falls in."""
        return self._root.join(USAGE_DIR, digest.algorithm, digest.hex[:2] + ".lock")

    def _mark_path(self, digest: Digest) -> str:
        name = digest.hex + _MARK_SUFFIX
        return self._root.join(USAGE_DIR, digest.algorithm, digest.hex[:2], name)

    def _read_mark(self, digest: Digest) -> tuple[str | None, float] | None:
        content = read_or_none(self._mark_path(digest))
        return None if content is None else _parse_mark(content, digest)

    def mark(self, digest: Digest, source: str | None, at: float) -> None:
        if source is not None:
            check_source(source)
        with locked(self.bucket_lock(digest)):
            current = self._read_mark(digest)
            if current is not None and (source is not None or current[0] is None):
                return  # pushed stays pushed; cached keeps its first origin
            doc = {"source": source, "at": at}
            self._root.write_file(self._mark_path(digest), json.dumps(doc).encode())
            if source is not None:
                _set_used(self._blob_path(digest), at, only_later=False)

    def touch(self, digest: Digest, at: float) -> None:
        if at > self._pending.get(digest, -math.inf):
            self._pending[digest] = at

    def pending(self) -> dict[Digest, float]:
        """A copy of the uses not yet written (taken on the event loop's thread)."""
        return dict(self._pending)

    def write_uses(self, uses: dict[Digest, float]) -> None:
        """Write ``uses`` (from :meth:`pending`), one lock per bucket; blocks."""
        by_lock: defaultdict[str, list[tuple[Digest, float]]] = defaultdict(list)
        for digest, at in uses.items():
            by_lock[self.bucket_lock(digest)].append((digest, at))
        for lock, batch in by_lock.items():
            with locked(lock):
                for digest, at in batch:
                    _set_used(self._blob_path(digest), at, only_later=True)

    def written(self, uses: dict[Digest, float]) -> None:
        """Forget the ``uses`` now on disk; a later touch meanwhile stays pending."""
        _settle(self._pending, uses)

    def cached(self) -> list[CachedBlob]:
        found: list[CachedBlob] = []
        top = self._root.join(USAGE_DIR)
        for directory, _, names in os.walk(top):
            for name in names:
                digest = self._digest_of(directory, name)
                if digest is None:
                    continue
                mark = self._read_mark(digest)
                if mark is None or mark[0] is None:
                    continue
                try:
                    held = os.stat(self._blob_path(digest))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                used = max(held.st_mtime, self._pending.get(digest, -math.inf))
                found.append(CachedBlob(digest, held.st_size, mark[0], mark[1], used))
        return sorted(found, key=lambda b: (b.last_used, str(b.digest)))

    def _digest_of(self, directory: str, name: str) -> Digest | None:
        return _digest_in(os.path.basename(os.path.dirname(directory)), name)

    def remove_cached(self, digest: Digest, unused_since: float) -> bool:
        if self._busy[digest] or self._pending.get(digest, -math.inf) > unused_since:
            return False
        path = self._blob_path(digest)
        with locked(self.bucket_lock(digest)):
            mark = self._read_mark(digest)
            if mark is None or mark[0] is None:
                return False
            try:
                held = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if held.st_mtime > unused_since:
                return False
            # An open stream keeps reading the unlinked file, whole (POSIX).
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
            self._root.remove(self._mark_path(digest))
        self._pending.pop(digest, None)
        return True

    def forget(self, digest: Digest) -> None:
        """Drop the mark of a blob that was deleted outright."""
        with locked(self.bucket_lock(digest)):
            self._root.remove(self._mark_path(digest))
        self._pending.pop(digest, None)

    def refresh_held(self, final: str, digest: Digest) -> bool:
        """For a commit of ``digest``: whether it is already held; if so its last
        use becomes now, under the bucket lock, so no removal can race it."""
        with locked(self.bucket_lock(digest)):
            return _set_used(final, None, only_later=True)


def _set_used(path: str, at: float | None, *, only_later: bool) -> bool:
    """Set ``path``'s modification time to ``at`` (``None``: now); whether it exists."""
    try:
        if at is not None and only_later and os.stat(path).st_mtime >= at:
            return True
        os.utime(path, None if at is None else (at, at))
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


class ManifestUsage:
    """Marks and uses of the manifests under one root, per repository.

    On disk: ``repositories/<repository>/_usage/<algorithm>/<hex>.json`` holds
    a manifest's origin, its file's modification time its last use, and
    ``repositories/<repository>/_usage.lock`` is taken to mark, flush and
    remove. ``touch``, ``pending`` and ``written`` run on the event loop's
    thread and do no I/O; the others block and run in worker threads.
    """

    __slots__ = ("_delete", "_manifest_path", "_pending", "_repositories", "_root", "_where")

    def __init__(
        self,
        root: Root,
        where: Callable[..., str],
        manifest_path: Callable[[str, Digest], str],
        delete: Callable[[str, Digest], bool],
        repositories: Callable[[], list[str]],
    ) -> None:
        self._root = root
        self._where = where  # (repository, *parts) -> path under the repository
        self._manifest_path = manifest_path
        self._delete = delete
        self._repositories = repositories
        self._pending: dict[tuple[str, Digest], float] = {}

    def _lock(self, repository: str) -> str:
        return self._where(repository, USAGE_DIR_PRIVATE + ".lock")

    def _mark_path(self, repository: str, digest: Digest) -> str:
        name = digest.hex + _MARK_SUFFIX
        return self._where(repository, USAGE_DIR_PRIVATE, digest.algorithm, name)

    def _read_mark(self, repository: str, digest: Digest) -> tuple[str | None, float] | None:
        content = read_or_none(self._mark_path(repository, digest))
        return None if content is None else _parse_mark(content, digest)

    def mark(self, repository: str, digest: Digest, source: str | None, at: float) -> None:
        if source is not None:
            check_source(source)
        with locked(self._lock(repository)):
            current = self._read_mark(repository, digest)
            if current is not None and (source is not None or current[0] is None):
                return
            doc = {"source": source, "at": at}
            self._root.write_file(self._mark_path(repository, digest), json.dumps(doc).encode())
            if source is not None:
                _set_used(self._manifest_path(repository, digest), at, only_later=False)

    def touch(self, repository: str, digest: Digest, at: float) -> None:
        key = (repository, digest)
        if at > self._pending.get(key, -math.inf):
            self._pending[key] = at

    def pending(self) -> dict[tuple[str, Digest], float]:
        """A copy of the uses not yet written (taken on the event loop's thread)."""
        return dict(self._pending)

    def write_uses(self, uses: dict[tuple[str, Digest], float]) -> None:
        """Write ``uses`` (from :meth:`pending`), one lock per repository; blocks."""
        by_repository: defaultdict[str, list[tuple[Digest, float]]] = defaultdict(list)
        for (repository, digest), at in uses.items():
            by_repository[repository].append((digest, at))
        for repository, batch in by_repository.items():
            with locked(self._lock(repository)):
                for digest, at in batch:
                    _set_used(self._manifest_path(repository, digest), at, only_later=True)

    def written(self, uses: dict[tuple[str, Digest], float]) -> None:
        """Forget the ``uses`` now on disk; a later touch meanwhile stays pending."""
        _settle(self._pending, uses)

    def cached(self) -> list[CachedManifest]:
        found: list[CachedManifest] = []
        for repository in self._repositories():
            top = self._where(repository, USAGE_DIR_PRIVATE)
            for directory, _, names in os.walk(top):
                for name in names:
                    digest = _digest_in(os.path.basename(directory), name)
                    if digest is None:
                        continue
                    mark = self._read_mark(repository, digest)
                    if mark is None or mark[0] is None:
                        continue
                    try:
                        held = os.stat(self._manifest_path(repository, digest))
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                    used = max(held.st_mtime, self._pending.get((repository, digest), -math.inf))
                    size = held.st_size - _media_type_line(self._manifest_path(repository, digest))
                    found.append(CachedManifest(repository, digest, size, mark[0], mark[1], used))
        return sorted(found, key=lambda m: (m.last_used, m.repository, str(m.digest)))

    def remove_cached(self, repository: str, digest: Digest, unused_since: float) -> bool:
        if self._pending.get((repository, digest), -math.inf) > unused_since:
            return False
        with locked(self._lock(repository)):
            mark = self._read_mark(repository, digest)
            if mark is None or mark[0] is None:
                return False
            try:
                held = os.stat(self._manifest_path(repository, digest))
            except (FileNotFoundError, NotADirectoryError):
                return False
            if held.st_mtime > unused_since:
                return False
            removed = self._delete(repository, digest)
            self._root.remove(self._mark_path(repository, digest))
        self._pending.pop((repository, digest), None)
        return removed

    def forget(self, repository: str, digest: Digest) -> None:
        """Drop the mark of a manifest that was deleted outright."""
        with locked(self._lock(repository)):
            self._root.remove(self._mark_path(repository, digest))
        self._pending.pop((repository, digest), None)


K = TypeVar("K")


def _settle(pending: dict[K, float], written: dict[K, float]) -> None:
    for key, at in written.items():
        if pending.get(key) == at:
            del pending[key]


def _parse_mark(content: bytes, digest: Digest) -> tuple[str | None, float]:
    try:
        doc = json.loads(content)
        source, at = doc["source"], float(doc["at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"corrupt usage mark for {digest}: {exc}") from exc
    if source is not None and not isinstance(source, str):
        raise StorageError(f"corrupt usage mark for {digest}: source {source!r}")
    return source, at


def _digest_in(algorithm: str, name: str) -> Digest | None:
    """The digest a mark file named ``name`` in ``<algorithm>/`` is for, or ``None``."""
    if not name.endswith(_MARK_SUFFIX):
        return None
    try:
        return Digest.parse(f"{algorithm}:{name[: -len(_MARK_SUFFIX)]}")
    except DigestInvalid:
        return None


def _media_type_line(path: str) -> int:
    """The length of a manifest file's first line (its media type and newline)."""
    try:
        with open(path, "rb") as file:
            return len(file.readline(256))
    except (FileNotFoundError, NotADirectoryError):
        return 0
