"""Cached manifests made durable behind the client: served verified, committed after.

A manifest fetched through a connector is verified (its digest is its
bytes' hash; one asked for by digest is checked against it) before it is
served. Writing it to the store, marking it as cached and moving the tag
(each an atomic, ``fsync``-ed file on a filesystem store) need not delay
that answer: :class:`ManifestCommits` does them in the resolver's own
background work, under the same rule as blobs (DESIGN.md, "Resolution
rules"):

- until the commit has ended, the next request for the manifest or the tag
  is answered from the verified copy held here (the same bytes, the same tag
  record), never from the upstream again;
- the store is written in the order it always was (manifest, its cached
  mark, then the tag), each file atomically, so a crash at any moment leaves
  each name absent or whole, and a tag never names a manifest not written;
- a commit that fails costs the cached copy, not the client, who was served
  verified bytes: it is logged, and the next request fetches again.

A commit is shielded once it has started, so a resolver that closes waits
for it (as it waits for a blob's). Whatever changes the store's tags, or
asks it for more than a manifest or a tag record, waits for the commits in
flight first (:meth:`ManifestCommits.settled`): a push never races the
commit of a tag it replaces, and a listing sees what was served.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from dockerconnect._digest import Digest
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import ManifestStore, TagRecord
from dockerconnect._resolve.context import Context
from dockerconnect.errors import DockerConnectError

__all__ = ["ManifestCommits"]

log = logging.getLogger("dockerconnect.resolver")


class ManifestCommits:
    """A manifest store seen through the commits still in flight.

    Reads of a manifest or a tag record find what a commit in flight is
    writing before they look in the store; every other use of the store
    (through :attr:`inner`) should wait for :meth:`settled` first.
    """

    def __init__(self, context: Context, store: ManifestStore) -> None:
        self._ctx = context
        #: The store the commits write to.
        self.inner = store
        self._manifests: dict[tuple[str, Digest], Manifest] = {}
        self._tags: dict[tuple[str, str], TagRecord] = {}
        self._get_tagged: (
            Callable[[str, str], Awaitable[tuple[TagRecord, Manifest | None] | None]] | None
        ) = getattr(store, "get_tagged", None)

    # -- the store face the manifests room reads and writes through ---------------

    async def get_manifest(self, repository: str, digest: Digest) -> Manifest | None:
        held = self._manifests.get((repository, digest))
        if held is not None:
            return held
        return await self.inner.get_manifest(repository, digest)

    async def get_tag(self, repository: str, tag: str) -> TagRecord | None:
        held = self._tags.get((repository, tag))
        if held is not None:
            return held
        return await self.inner.get_tag(repository, tag)

    async def get_tagged(
        self, repository: str, tag: str
    ) -> tuple[TagRecord, Manifest | None] | None:
        """The tag's record, and the manifest it names when that comes with it.

        A commit in flight answers both from memory. Otherwise a store with
        ``get_tagged`` (the filesystem's: one thread hop instead of two)
        answers both; with any other the manifest is ``None`` here, for the
        caller to read once the tag is known to be fresh.
        """
        held = self._tags.get((repository, tag))
        if held is not None:
            return held, self._manifests.get((repository, held.digest))
        if self._get_tagged is not None:
            return await self._get_tagged(repository, tag)
        record = await self.inner.get_tag(repository, tag)
        return None if record is None else (record, None)

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        await self.inner.put_manifest(repository, manifest)

    async def set_tag(self, repository: str, tag: str, record: TagRecord) -> None:
        await self.settled()  # never overtaken by an older commit of the same tag
        await self.inner.set_tag(repository, tag, record)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        await self.settled()
        return await self.inner.delete_tag(repository, tag)

    # -- committing ---------------------------------------------------------------

    async def settled(self) -> None:
        """Wait until no commit is in flight (``Tasks.settled``)."""
        await self._ctx.tasks.settled()

    async def keep(
        self,
        repository: str,
        manifest: Manifest,
        tag: str | None,
        record: TagRecord | None,
        fields: dict[str, Any],
    ) -> None:
        """Hold ``manifest`` (and ``tag``'s ``record``) for readers, and commit
        them to the store in the background; returns once the commit runs.

        ``fields`` describe the manifest in the ``cached`` event emitted once
        it is in the store.
        """
        key = (repository, manifest.digest)
        self._manifests[key] = manifest
        if tag is not None and record is not None:
            self._tags[(repository, tag)] = record
        begun: list[bool] = []
        try:
            # start(), not start_soon(): the commit is running (and shielded)
            # before the client is answered, so closing the resolver right
            # after waits for it instead of cancelling it unstarted.
            await self._ctx.tasks.start(
                self._commit, repository, manifest, tag, record, fields, begun
            )
        except BaseException:
            if not begun:  # otherwise the commit forgets them when it ends
                self._forget(repository, manifest, tag, record)
            raise

    async def _commit(
        self,
        repository: str,
        manifest: Manifest,
        tag: str | None,
        record: TagRecord | None,
        fields: dict[str, Any],
        begun: list[bool],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.CancelScope(shield=True):
            begun.append(True)
            task_status.started()
            try:
                await self._write(repository, manifest, tag, record, fields)
            except DockerConnectError as exc:
                log.warning(
                    "caching of manifest %s@%s failed after it was served: %s",
                    repository,
                    manifest.digest,
                    exc,
                )
            finally:
                self._forget(repository, manifest, tag, record)

    async def _write(
        self,
        repository: str,
        manifest: Manifest,
        tag: str | None,
        record: TagRecord | None,
        fields: dict[str, Any],
    ) -> None:
        store = self.inner
        await store.put_manifest(repository, manifest)
        await self._ctx.usage.cached_manifest(
            repository, manifest.digest, str(fields["connector"]), manifest.size
        )
        self._ctx.stats.emit("cached", **fields)
        if tag is None or record is None:
            return
        existing = await store.get_tag(repository, tag)
        if existing is None or not existing.local:
            await store.set_tag(repository, tag, record)

    def _forget(
        self, repository: str, manifest: Manifest, tag: str | None, record: TagRecord | None
    ) -> None:
        key = (repository, manifest.digest)
        if self._manifests.get(key) is manifest:
            del self._manifests[key]
        if tag is not None and self._tags.get((repository, tag)) is record:
            del self._tags[(repository, tag)]
