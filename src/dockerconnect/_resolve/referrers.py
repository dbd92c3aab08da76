"""Referrers (OCI distribution-spec 1.1, "Listing Referrers"): here, then each connector.

A referrer of a digest is a manifest whose ``subject`` is that digest: a
signature, an SBOM, an attestation. The merged answer is the local
referrers (the store's :class:`~dockerconnect.ReferrersIndex`: pushed and
cached manifests alike) followed by each serving connector's, in order,
de-duplicated by digest, so the first source to list a digest describes it.

A connector is asked through :class:`~dockerconnect.ReferrersSource` when it
has it; one without it, or one that answers ``None`` (no referrers API), is
asked for the tag schema instead: the OCI index tagged ``<alg>-<hex>``
("Referrers Tag Schema", the algorithm truncated to 32 characters and the
hex to 64), whose ``manifests`` are the referrers. No such tag is ``[]``.

Each connector's answer is kept for ``CachingPolicy.referrers_ttl`` seconds
and, once expired, served stale for up to ``stale_if_error`` more when the
connector cannot be asked, as a tag is (the decisions are the policy's,
matched exhaustively). The answer is kept whole and filtered by
``artifact_type`` here, so one upstream request serves every filter.
"""

from __future__ import annotations

import logging

import attrs
import cachetools
from typing_extensions import assert_never

from dockerconnect._chain import current_chain
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import OCI_INDEX, Manifest, base_media_type
from dockerconnect._policy import StaleDecision, TagDecision
from dockerconnect._protocols import Connector, ManifestStore, ReferrersIndex, ReferrersSource
from dockerconnect._resolve.context import Context
from dockerconnect._resolve.sources import Nobody, expect
from dockerconnect.errors import ConnectorCycle, ManifestUnknown, UpstreamError

__all__ = ["REFERRERS_CACHE_SIZE", "Referrers", "referrers_tag"]

log = logging.getLogger("dockerconnect.resolver")

#: Connector answers kept, per resolver (least recently used are forgotten first).
REFERRERS_CACHE_SIZE = 4096


def referrers_tag(digest: Digest) -> str:
    """The tag-schema tag of ``digest``'s referrers: ``<alg>-<hex>``, truncated per the spec."""
    return f"{digest.algorithm[:32]}-{digest.hex[:64]}"


@attrs.frozen
class _Answer:
    """One connector's referrers of one digest, and when it gave them."""

    at: float
    descriptors: tuple[Descriptor, ...]


class Referrers:
    """The resolver's referrers: its store's index first, then the connectors."""

    def __init__(self, context: Context, *, store: ManifestStore) -> None:
        self._ctx = context
        self.owner = context.owner
        self.store = store
        self._answers: cachetools.LRUCache[tuple[str, str, Digest], _Answer] = cachetools.LRUCache(
            REFERRERS_CACHE_SIZE
        )

    async def lookup(
        self,
        repository: str,
        digest: Digest,
        artifact_type: str | None = None,
        *,
        remember: bool = True,
    ) -> list[Descriptor]:
        """Every referrer of ``digest``, local first, de-duplicated; ``[]`` if none.

        ``UpstreamError`` only when nothing was found and some connector
        could not be asked. ``remember=False`` (for ``check()``) keeps no
        new connector answer.
        """
        found: dict[Digest, Descriptor] = {}
        for descriptor in await self.local(repository, digest):
            found.setdefault(descriptor.digest, descriptor)
        failures: dict[str, BaseException] = {}
        for connector in self._ctx.sources.serving(repository):
            try:
                answer = await self._from(connector, repository, digest, remember)
            except Exception as exc:
                failures[connector.name] = self._ctx.sources.failed(
                    connector, exc, _what(repository, digest)
                )
                continue
            for descriptor in answer:
                found.setdefault(descriptor.digest, descriptor)
        nobody = Nobody(self.owner, failures)
        if not found and nobody.real_failures:
            raise nobody.error(
                ManifestUnknown,
                f"referrers of {repository}@{digest}",
                repository=repository,
                digest=digest,
            )
        listed = list(found.values())
        if artifact_type is not None:
            listed = [d for d in listed if d.artifact_type == artifact_type]
        return listed

    async def local(self, repository: str, digest: Digest) -> list[Descriptor]:
        """The referrers this registry holds (none for a store without an index)."""
        if not isinstance(self.store, ReferrersIndex):
            return []
        return await self.store.referrers(repository, digest)

    async def _from(
        self, connector: Connector, repository: str, digest: Digest, remember: bool
    ) -> tuple[Descriptor, ...]:
        """One connector's referrers: kept while fresh, asked again once expired."""
        key = (connector.name, repository, digest)
        policy = self._ctx.policy_for(connector.name)
        held = self._answers.get(key)
        if held is not None:
            decision = policy.referrers_decision(held.at, self._ctx.clock())
            if decision is TagDecision.FRESH:
                self._ctx.stats.referrers_cached += 1
                return held.descriptors
            if decision is TagDecision.REVALIDATE:
                pass
            else:
                assert_never(decision)
        try:
            descriptors = await self._ctx.tasks.shared(
                ("referrers", connector.name, repository, str(digest), current_chain()),
                lambda: self._ask(connector, repository, digest),
            )
        except ConnectorCycle:
            raise
        except Exception as exc:
            if held is None:
                raise
            stale = policy.referrers_stale_decision(held.at, self._ctx.clock())
            if stale is StaleDecision.SERVE_STALE:
                self._ctx.sources.failed(connector, exc, _what(repository, digest))
                self._ctx.stats.stale_serves += 1
                log.warning(
                    "serving stale referrers of %s@%s from %r (it could not be asked)",
                    repository, digest, connector.name,
                )  # fmt: skip
                return held.descriptors
            if stale is StaleDecision.FAIL:
                raise
            assert_never(stale)
        if remember and policy.referrers_ttl > 0:
            self._answers[key] = _Answer(self._ctx.clock(), descriptors)
        return descriptors

    async def _ask(
        self, connector: Connector, repository: str, digest: Digest
    ) -> tuple[Descriptor, ...]:
        """The referrers API if the connector has it, else (or on ``None``) the tag schema."""
        sources, what = self._ctx.sources, _what(repository, digest)
        if isinstance(connector, ReferrersSource):
            source = connector
            listed = await sources.call(
                connector, "referrers", what, lambda: source.referrers(repository, digest)
            )
            if listed is not None:
                return _descriptors(connector, listed)
        tag = referrers_tag(digest)
        answer = await sources.call(
            connector, "get_manifest", what,
            lambda: connector.get_manifest(repository, tag, accept=(OCI_INDEX,)),
        )  # fmt: skip
        index = expect(connector, answer, Manifest, "get_manifest")
        if index is None:
            return ()
        if base_media_type(index.media_type) != OCI_INDEX:
            log.warning(
                "connector %r tags %s:%s with a %s, not an OCI index of referrers: ignored",
                connector.name, repository, tag, index.media_type,
            )  # fmt: skip
            return ()
        return tuple(index.manifests)


def _what(repository: str, digest: Digest) -> str:
    return f"referrers of {repository}@{digest}"


def _descriptors(connector: Connector, listed: object) -> tuple[Descriptor, ...]:
    """What a plugin's ``referrers`` returned, checked before anything touches it."""
    if not isinstance(listed, list) or not all(isinstance(d, Descriptor) for d in listed):
        raise UpstreamError(
            f"connector {connector.name!r} returned {type(listed).__name__} from referrers,"
            " not a list of Descriptor or None",
            connector=connector.name,
        )
    return tuple(listed)
