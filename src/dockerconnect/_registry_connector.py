"""Any ``Registry`` as a ``Connector`` of another: the "Prerelease -> Release" chain."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from dockerconnect._chain import current_chain, entered
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import Registry
from dockerconnect._stream import BlobStream
from dockerconnect.errors import BlobUnknown, ConnectorCycle, ManifestUnknown, NotFound

__all__ = ["RegistryConnector", "matches_patterns"]


def matches_patterns(repository: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``repository`` passes ``include`` (empty: everything) and not ``exclude``.

    Patterns are shell-style globs (``fnmatch``, case-sensitive) in which ``*``
    also matches ``/``.
    """
    if include and not any(fnmatch.fnmatchcase(repository, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(repository, p) for p in exclude)


class RegistryConnector:
    """A connector to another :class:`~dockerconnect.Registry` in this process.

    Its name defaults to the registry's name. "Not found" from the registry
    becomes ``None``; its ``UpstreamError``s pass through unchanged. A chain
    of registry connectors that leads back to a registry already asked raises
    :class:`~dockerconnect.errors.ConnectorCycle` instead of recursing.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        name: str | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> None:
        self.registry = registry
        self.name = name if name is not None else registry.name
        self.include = tuple(include)
        self.exclude = tuple(exclude)

    def __repr__(self) -> str:
        return f"RegistryConnector({self.registry.name!r}, name={self.name!r})"

    def serves(self, repository: str) -> bool:
        return matches_patterns(repository, self.include, self.exclude)

    def _guard(self) -> None:
        if id(self.registry) in current_chain():
            raise ConnectorCycle(
                f"connector {self.name!r} leads back to registry {self.registry.name!r}",
                connector=self.name,
            )

    async def get_manifest(
        self, repository: str, reference: str, *, accept: Sequence[str] | None = None
    ) -> Manifest | None:
        self._guard()
        with entered(self.registry):
            try:
                return await self.registry.get_manifest(repository, reference, accept=accept)
            except ManifestUnknown:
                return None

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        self._guard()
        with entered(self.registry):
            try:
                return await self.registry.head_manifest(repository, reference)
            except ManifestUnknown:
                return None

    async def stat_blob(self, repository: str, digest: Digest) -> Descriptor | None:
        self._guard()
        with entered(self.registry):
            try:
                return await self.registry.stat_blob(repository, digest)
            except BlobUnknown:
                return None

    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> BlobStream | None:
        self._guard()
        with entered(self.registry):
            try:
                inner = await self.registry.open_blob(repository, digest, offset=offset)
            except BlobUnknown:
                return None
        return BlobStream(digest, inner.size, inner, offset=inner.offset, source=self.name)

    async def tags(self, repository: str) -> list[str] | None:
        self._guard()
        with entered(self.registry):
            try:
                return await self.registry.tags(repository)
            except NotFound:  # NameUnknown among them: nothing to list
                return []

    async def repositories(self) -> list[str] | None:
        self._guard()
        with entered(self.registry):
            return await self.registry.repositories()

    async def referrers(
        self, repository: str, digest: Digest, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        """The inner registry's referrers; ``None`` when it has no ``referrers``,
        so the caller asks for the tag schema through :meth:`get_manifest`."""
        self._guard()
        query = getattr(self.registry, "referrers", None)
        if query is None:
            return None
        with entered(self.registry):
            try:
                found: list[Descriptor] = await query(
                    repository, digest, artifact_type=artifact_type
                )
            except NotFound:  # a registry that says so for an unknown repository
                return []
            return found
