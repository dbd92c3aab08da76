"""Helpers shared by the Resolver's tests: an injectable clock, a resolver factory."""

from __future__ import annotations

from dockerconnect import MemoryBlobStore, MemoryManifestStore, RegistryConnector, Resolver
from dockerconnect.testing import CountingConnector, FakeUpstream


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_resolver(
    *connectors: CountingConnector | FakeUpstream | RegistryConnector,
    name: str = "local",
    clock: Clock | None = None,
    **kwargs: object,
) -> Resolver:
    return Resolver(
        name,
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


async def read_all(stream: object) -> bytes:
    async with stream as s:  # type: ignore[attr-defined]
        return b"".join([chunk async for chunk in s])
