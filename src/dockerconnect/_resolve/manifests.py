"""Manifests by tag or digest: the local store, tag freshness, the connectors.

A tag record's fate is the policy's decision (``TagDecision``, then
``StaleDecision`` when nobody could confirm it), matched exhaustively. Fetches
are shared: one in flight per repository and reference (and chain of
registries the request came through), whether a client or eager caching
asked, so an index child asked for while eager caching fetches it costs one
upstream request.

Connectors are always asked with every manifest type the library
understands, so what is cached under a tag is what the tag really is; a
client with a narrower ``Accept`` is served a choice made here
(:meth:`Manifests.for_client`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
from typing_extensions import assert_never

from dockerconnect._chain import current_chain
from dockerconnect._descriptor import Descriptor, Platform
from dockerconnect._digest import Digest
from dockerconnect._manifest import MANIFEST_MEDIA_TYPES, Manifest, base_media_type
from dockerconnect._policy import CachingPolicy, StaleDecision, TagDecision
from dockerconnect._protocols import Connector, ManifestStore, TagRecord
from dockerconnect._resolve.commits import ManifestCommits
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.sources import Found, Nobody, expect
from dockerconnect.errors import DigestMismatch, ManifestUnknown

__all__ = ["Manifests", "Resolved"]

log = logging.getLogger("dockerconnect.resolver")
#: INFO: each manifest fetched through a connector (a cache miss).
misses = logging.getLogger("dockerconnect.resolver.misses")

_IMAGE_TYPES = frozenset(t for t in MANIFEST_MEDIA_TYPES if "index" not in t and "list" not in t)


@attrs.define
class Resolved:
    """A manifest and where it came from; ``fetched`` when a connector just sent it."""

    manifest: Manifest
    source: str
    fetched: bool = False
    policy: CachingPolicy | None = None
    #: Set by the first caller that started eager caching for this fetch.
    eager_started: bool = False


class Manifests:
    """The resolver's manifests: its store first, then the connectors."""

    def __init__(self, context: Context, *, store: ManifestStore) -> None:
        self._ctx = context
        self.owner = context.owner
        #: The store, seen through the commits of cached manifests still in
        #: flight (served from memory until they are durable).
        self.store = ManifestCommits(context, store)
        self.usage = context.usage

    # -- resolving -----------------------------------------------------------------

    async def resolve(self, repository: str, ref: Digest | str) -> Resolved:
        """The manifest for a tag or digest; ``ManifestUnknown`` when no source has it."""
        if isinstance(ref, Digest):
            local = await self.store.get_manifest(repository, ref)
            if local is not None:
                self._served(repository, ref, local)
                if local.digest.algorithm != "sha256":
                    # Stored under another algorithm's digest (a push by it):
                    # served as what it is, a manifest whose digest is its sha256.
                    local = Manifest.parse(local.data, local.media_type)
                return Resolved(local, self.owner)
            return await self._fetch_shared(repository, ref)
        tagged = await self.store.get_tagged(repository, ref)
        if tagged is None:
            return await self._fetch_shared(repository, ref)
        record, local = tagged
        decision = self._ctx.policy_for(record.source).tag_decision(record, self._ctx.clock())
        if decision is TagDecision.FRESH:
            if local is None:
                local = await self.store.get_manifest(repository, record.digest)
            if local is not None:
                self._served(repository, record.digest, local)
                return Resolved(local, self.owner)
            if record.local:
                raise ManifestUnknown(
                    f"tag {repository}:{ref} points at a manifest this registry lost",
                    repository=repository,
                    digest=record.digest,
                )
            return await self._fetch_shared(repository, ref)
        if decision is TagDecision.REVALIDATE:
            return await self._ctx.tasks.shared(
                ("revalidate", repository, ref, current_chain()),
                lambda: self._revalidate(repository, ref, record),
            )
        assert_never(decision)

    def _served(self, repository: str, digest: Digest, manifest: Manifest) -> None:
        self._ctx.stats.hit(self.owner)
        self._ctx.usage.used_manifest(repository, digest)
        self._ctx.stats.emit(
            "served", repository=repository, item="manifest", digest=digest, size=manifest.size
        )

    async def known_here(self, repository: str, ref: Digest | str) -> bool:
        if isinstance(ref, Digest):
            return await self.store.get_manifest(repository, ref) is not None
        return await self.store.get_tag(repository, ref) is not None

    def _fetch_shared(self, repository: str, ref: Digest | str) -> Awaitable[Resolved]:
        return self._ctx.tasks.shared(
            ("manifest", repository, str(ref), current_chain()),
            lambda: self._fetch(repository, ref),
        )

    async def _fetch(self, repository: str, ref: Digest | str) -> Resolved:
        found = await self._ctx.sources.first(
            self._ctx.sources.serving(repository),
            kind="manifest",
            request="get_manifest",
            repository=repository,
            ref=str(ref),
            ask=lambda connector: self._get(connector, repository, ref),
        )
        if isinstance(found, Nobody):
            raise found.error(
                ManifestUnknown, f"manifest {repository}:{ref}", repository=repository
            )
        return await self._keep(repository, ref, found)

    async def _get(
        self, connector: Connector, repository: str, ref: Digest | str
    ) -> Manifest | None:
        """One connector's answer, asked with every type; verified when asked by digest."""
        answer = await connector.get_manifest(repository, str(ref), accept=MANIFEST_MEDIA_TYPES)
        manifest = expect(connector, answer, Manifest, "get_manifest")
        if manifest is not None and isinstance(ref, Digest) and not ref.matches(manifest.data):
            raise DigestMismatch(
                f"connector {connector.name!r} returned a manifest that does not match {ref}",
                digest=ref,
                connector=connector.name,
                repository=repository,
            )
        return manifest

    async def _keep(self, repository: str, ref: Digest | str, found: Found[Manifest]) -> Resolved:
        manifest, connector = found.value, found.connector
        policy = self._ctx.policy_for(connector.name)
        fields: dict[str, Any] = {
            "connector": connector.name, "repository": repository, "item": "manifest",
            "digest": manifest.digest, "size": manifest.size,
        }  # fmt: skip
        self._ctx.stats.emit("fetched", **fields)
        if policy.cache_manifests:
            # Verified: served now, made durable in the background (commits.py).
            tag = ref if isinstance(ref, str) else None
            record = None
            if tag is not None:
                record = TagRecord(
                    manifest.digest, manifest.media_type, self._ctx.clock(), connector.name
                )
            await self.store.keep(repository, manifest, tag, record, fields)
        misses.info(
            "cache miss: manifest %s:%s (%s, %d bytes) from %r%s",
            repository, ref, manifest.digest, len(manifest.data), connector.name,
            "" if policy.cache_manifests else " (not cached: policy)",
        )  # fmt: skip
        return Resolved(manifest, connector.name, fetched=True, policy=policy)

    # -- revalidating a tag -----------------------------------------------------------

    async def _revalidate(self, repository: str, tag: str, record: TagRecord) -> Resolved:
        """HEAD the tag where it came from, then the others; compare digests."""
        self._ctx.stats.revalidations += 1
        order = self._ctx.sources.source_first(repository, record.source)

        async def head(connector: Connector) -> Descriptor | None:
            found = await connector.head_manifest(repository, tag)
            return expect(connector, found, Descriptor, "head_manifest")

        async def confirm(connector: Connector, found: Descriptor) -> Resolved | None:
            if found.digest == record.digest:
                local = await self.store.get_manifest(repository, record.digest)
                if local is not None:
                    confirmed = TagRecord(
                        record.digest, local.media_type, self._ctx.clock(), connector.name
                    )
                    await self.store.set_tag(repository, tag, confirmed)
                    self._served(repository, record.digest, local)
                    return Resolved(local, self.owner)
            # Changed (or lost locally): fetch the new content by its digest,
            # which is immutable and verifiable, then move the tag.
            manifest = await self._ctx.sources.call(
                connector, "get_manifest", f"{repository}:{tag}",
                lambda: self._get(connector, repository, found.digest),
            )  # fmt: skip
            if manifest is None:
                return None
            return await self._keep(repository, tag, Found(connector, manifest))

        outcome = await self._ctx.sources.first_then(
            order,
            kind="manifest",
            request="head_manifest",
            repository=repository,
            ref=tag,
            ask=head,
            use=confirm,
        )
        if isinstance(outcome, Found):
            return outcome.value
        if outcome.real_failures or not order:
            # Nobody could confirm or deny the tag (every upstream failed, or no
            # connector serves the repository any more): it is not "gone", it
            # is unconfirmed, and stale_if_error says how long that is fine.
            return await self._unconfirmed(repository, tag, record, outcome)
        # Every upstream answered that the tag is gone: so is our copy of it.
        await self.store.delete_tag(repository, tag)
        raise ManifestUnknown(
            f"tag {repository}:{tag} is no longer known upstream", repository=repository
        )

    async def _unconfirmed(
        self, repository: str, tag: str, record: TagRecord, outcome: Nobody
    ) -> Resolved:
        decision = self._ctx.policy_for(record.source).stale_decision(record, self._ctx.clock())
        if decision is StaleDecision.SERVE_STALE:
            local = await self.store.get_manifest(repository, record.digest)
            if local is not None:
                self._ctx.stats.stale_serves += 1
                self._ctx.usage.used_manifest(repository, record.digest)
                self._ctx.stats.emit(
                    "stale_served", repository=repository, item="manifest",
                    digest=record.digest, size=local.size, detail=tag,
                )  # fmt: skip
                log.warning("serving stale tag %s:%s (every upstream failed)", repository, tag)
                return Resolved(local, self.owner)
        elif decision is StaleDecision.FAIL:
            pass
        else:
            assert_never(decision)
        if not outcome.real_failures:
            raise ManifestUnknown(
                f"tag {repository}:{tag} expired and no connector can confirm it",
                repository=repository,
            )
        raise outcome.error(ManifestUnknown, f"tag {repository}:{tag}", repository=repository)

    # -- HEAD without caching ---------------------------------------------------------

    async def head_through(self, repository: str, ref: Digest | str) -> Descriptor:
        """The descriptor from the connectors, for a HEAD when not every one caches.

        A connector whose policy caches manifests is asked with a GET (and
        what it sends is cached, so the client's next GET is local); any
        other with a HEAD only.
        """

        async def head(connector: Connector) -> Descriptor | None:
            if self._ctx.policy_for(connector.name).cache_manifests:
                manifest = await self._get(connector, repository, ref)
                if manifest is None:
                    return None
                kept = await self._keep(repository, ref, Found(connector, manifest))
                return kept.manifest.descriptor()
            found = await connector.head_manifest(repository, str(ref))
            return expect(connector, found, Descriptor, "head_manifest")

        async def check(connector: Connector, found: Descriptor) -> Descriptor:
            if isinstance(ref, Digest) and found.digest != ref:
                raise DigestMismatch(f"HEAD answered {found.digest} for {ref}", digest=ref)
            return found

        outcome = await self._ctx.sources.first_then(
            self._ctx.sources.serving(repository),
            kind="manifest",
            request="head_manifest",
            repository=repository,
            ref=str(ref),
            ask=head,
            use=check,
        )
        if isinstance(outcome, Nobody):
            raise outcome.error(
                ManifestUnknown, f"manifest {repository}:{ref}", repository=repository
            )
        return outcome.value

    async def location(self, repository: str, digest: Digest) -> tuple[str | None, Manifest | None]:
        """Where a manifest is (here, a connector, nowhere) and its content. Caches nothing."""
        local = await self.store.get_manifest(repository, digest)
        if local is not None:
            return self.owner, local
        for connector in self._ctx.sources.serving(repository):
            try:
                found = await self._ctx.sources.call(
                    connector, "get_manifest", str(digest),
                    functools.partial(self._get, connector, repository, digest),
                )  # fmt: skip
            except Exception as exc:
                self._ctx.sources.failed(connector, exc, str(digest))
                continue
            if found is not None:
                return connector.name, found
        return None, None

    # -- choosing for the client ----------------------------------------------------

    async def for_client(
        self,
        repository: str,
        resolved: Resolved,
        accept: Sequence[str] | None,
        platform: Platform,
    ) -> Resolved:
        """What to serve a client whose ``Accept`` is ``accept``, chosen here.

        A manifest of a type the client accepts is served as it is. An index
        (or manifest list) asked for by a client that takes only image
        manifests is answered with the child for ``platform``, as
        distribution does for such clients. Otherwise the manifest is served
        as it is, and the client decides.
        """
        if accept is None:
            return resolved
        if isinstance(accept, str):
            accept = (accept,)
        manifest = resolved.manifest
        if manifest.media_type in accept:
            return resolved  # named as it is, as clients do: no need to normalise
        wanted = {base_media_type(t) for t in accept}
        if not wanted or "*/*" in wanted or base_media_type(manifest.media_type) in wanted:
            return resolved
        if not manifest.is_index or not wanted & _IMAGE_TYPES:
            return resolved
        for child in manifest.manifests:
            if (
                child.platform is not None
                and child.platform.matches(platform)
                and base_media_type(child.media_type) in wanted
            ):
                return await self.resolve(repository, child.digest)
        return resolved
