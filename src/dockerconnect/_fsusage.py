"""The filesystem blob store's usage log: which blobs are a cache, and when each was used.

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
from typing import Final

from dockerconnect._digest import Digest
from dockerconnect._fsroot import Root, fsync_dir, locked, read_or_none
from dockerconnect._protocols import CachedBlob
from dockerconnect._stores import check_source
from dockerconnect.errors import DigestInvalid, StorageError

__all__ = ["USAGE_DIR", "Usage"]

USAGE_DIR: Final = "usage"
_MARK_SUFFIX: Final = ".json"


class Usage:
    """Marks and uses of the blobs under one root; all methods but ``touch`` block."""

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
        if content is None:
            return None
        try:
            doc = json.loads(content)
            source, at = doc["source"], float(doc["at"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"corrupt usage mark for {digest}: {exc}") from exc
        if source is not None and not isinstance(source, str):
            raise StorageError(f"corrupt usage mark for {digest}: source {source!r}")
        return source, at

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

    def flush(self) -> None:
        pending = dict(self._pending)
        by_lock: defaultdict[str, list[tuple[Digest, float]]] = defaultdict(list)
        for digest, at in pending.items():
            by_lock[self.bucket_lock(digest)].append((digest, at))
        for lock, uses in by_lock.items():
            with locked(lock):
                for digest, at in uses:
                    _set_used(self._blob_path(digest), at, only_later=True)
        # A touch that came in meanwhile (a later time) stays pending.
        for digest, at in pending.items():
            if self._pending.get(digest) == at:
                del self._pending[digest]

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
        if not name.endswith(_MARK_SUFFIX):
            return None
        algorithm = os.path.basename(os.path.dirname(directory))
        try:
            return Digest.parse(f"{algorithm}:{name[: -len(_MARK_SUFFIX)]}")
        except DigestInvalid:
            return None

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
