"""Cached manifests committed in the resolver's own work, held for readers meanwhile.

A manifest fetched through a connector is verified (its digest is its
bytes' hash; one asked for by digest is checked against it). Then
:class:`ManifestCommits` writes it to the store, marks it as cached and moves
the tag (each an atomic, ``fsync``-ed file on a filesystem store), and the
client is answered once that commit has ended:

- the manifest is durable, and in the store, before anyone is told of it: a
  process sharing the store that is asked next (a client's GET by digest
  after its HEAD by tag, sent to another worker or replica) finds it there
  rather than asking the upstream again. Answering first and committing in
  the background was measured (a cold manifest 26 ms → 6 ms here) and
  undone for that reason: the verified copy lives only in the memory of the
  process that fetched it;
- while the commit runs, other requests in this process for the manifest or
  the tag are answered from the verified copy held here, never from the
  upstream again;
- the store is written in the order it always was (manifest, its cached
  mark, then the tag), each file atomically, so a crash at any moment leaves
  each name absent or whole, and a tag never names a manifest not written;
- a commit that fails costs the cached copy, not the client, who gets the
  verified bytes: it is logged, and the next request fetches again.

A commit is shielded once it has started, so a resolver that closes, or a
client that goes away, does not cut it short. Whatever changes the store's
tags, or asks it for more than a manifest or a tag record, waits for the
commits in flight first (:meth:`ManifestCommits.settled`): a push never
races the commit of a tag it replaces, and a listing sees what was served.
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
        #: The commit of each tag in flight, by the event it sets when it ends.
        self._tag_commits: dict[tuple[str, str], anyio.Event] = {}
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
        """Hold ``manifest`` (and ``tag``'s ``record``) for readers while it is
        committed to the store; returns once the commit has ended.

        The caller answers its client after this, so the manifest is in the
        store (durable) by then: another process sharing the store, asked
        next (a client's GET by digest after a HEAD by tag, behind a load
        balancer), finds it there instead of asking the upstream again.
        ``fields`` describe the manifest in the ``cached`` event emitted once
        it is in the store.
        """
        ended = anyio.Event()
        if tag is not None:
            # One commit of a tag at a time, in the order they were asked for:
            # an older record never lands after a newer one.
            while (previous := self._tag_commits.get((repository, tag))) is not None:
                await previous.wait()
            self._tag_commits[(repository, tag)] = ended
        key = (repository, manifest.digest)
        self._manifests[key] = manifest
        if tag is not None and record is not None:
            self._tags[(repository, tag)] = record
        begun: list[bool] = []
        try:
            # In the resolver's own work (counted by settled(), shielded), so a
            # caller that goes away does not cut the commit short.
            await self._ctx.tasks.start(
                self._commit, repository, manifest, tag, record, fields, begun, ended
            )
        except BaseException:
            if not begun:  # otherwise the commit forgets them when it ends
                self._forget(repository, manifest, tag, record)
                self._ended(repository, tag, ended)
            raise
        await ended.wait()

    async def _commit(
        self,
        repository: str,
        manifest: Manifest,
        tag: str | None,
        record: TagRecord | None,
        fields: dict[str, Any],
        begun: list[bool],
        ended: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.CancelScope(shield=True):
            begun.append(True)
            task_status.started()
            try:
                await self._write(repository, manifest, tag, record, fields)
            except Exception as exc:
                # The client still gets the verified manifest; only the cached
                # copy is lost (and a store's bug never takes the resolver's
                # background work down with it).
                log.warning(
                    "caching of manifest %s@%s failed: %s", repository, manifest.digest, exc
                )
            finally:
                self._forget(repository, manifest, tag, record)
                self._ended(repository, tag, ended)

    def _ended(self, repository: str, tag: str | None, ended: anyio.Event) -> None:
        if tag is not None and self._tag_commits.get((repository, tag)) is ended:
            del self._tag_commits[(repository, tag)]
        ended.set()

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
