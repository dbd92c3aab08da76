"""The connector story in a few seconds, with no network and no servers.

Two registries in one process, *Release* and *Prerelease*, and a connector
from Prerelease to Release:

1. an image pushed to Release is pulled through Prerelease: where each byte
   came from, and what got cached;
2. a push to Prerelease whose layers live only in Release is accepted;
3. the connector is removed and ``check()`` shows the dangling manifest;
4. the same with ``pin_on_push``: nothing dangles.

Run it: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import anyio

from dockerconnect import (
    CachingPolicy,
    IntegrityEntry,
    IntegrityReport,
    MemoryBlobStore,
    MemoryManifestStore,
    Reference,
    RegistryConnector,
    Resolver,
)
from dockerconnect.testing import RandomImage, random_image


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print a small aligned table."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def kind(entry: IntegrityEntry) -> str:
    media_type = entry.descriptor.media_type
    return "config" if "config" in media_type else "layer"


def rows_of(report: IntegrityReport, missing: str = "MISSING") -> list[tuple[str, ...]]:
    return [(kind(e), short(e.descriptor.digest), e.location or missing) for e in report.entries]


def short(digest: object) -> str:
    return str(digest)[:19] + "…"


def registry(name: str, *connectors: RegistryConnector, pin: bool = False) -> Resolver:
    return Resolver(
        name,
        manifests=MemoryManifestStore(),
        blobs=MemoryBlobStore(),
        connectors=connectors,
        policy=CachingPolicy(pin_on_push=pin),
    )


async def push_image(r: Resolver, repository: str, image: RandomImage, tag: str) -> None:
    for digest, data in image.blobs.items():
        await r.push_blob(repository, data, digest=digest)
    await r.push_manifest(
        repository, image.manifest.data, media_type=image.manifest.media_type, tag=tag
    )


async def main() -> None:
    print("dockerconnect quickstart: Release and Prerelease, one process, no network")
    ref = Reference.parse("registry.example/team/app:1.0")
    print(f"\nreference {ref.familiar!r}: registry {ref.registry}, repository {ref.repository}")

    base = random_image(layers=3, layer_size=64 * 1024, seed=1)
    async with (
        registry("release") as release,
        registry("prerelease", RegistryConnector(release)) as prerelease,
    ):
        # 1. Push to Release, pull through Prerelease.
        await push_image(release, "team/app", base, "1.0")
        manifest = await prerelease.get_manifest("team/app", "1.0")
        rows = [("manifest", short(manifest.digest), str(len(manifest.data)), "release", "yes")]
        for layer in manifest.blobs():
            async with await prerelease.open_blob("team/app", layer.digest) as stream:
                data = b"".join([chunk async for chunk in stream])
            cached = await prerelease.blobs.stat(layer.digest) is not None
            kind = "config" if layer is manifest.config else "layer"
            rows.append(
                (
                    kind,
                    short(layer.digest),
                    str(len(data)),
                    stream.source,
                    "yes" if cached else "no",
                )
            )
        table(
            "1. pull team/app:1.0 through prerelease (first time)",
            ("item", "digest", "bytes", "came from", "cached in prerelease"),
            rows,
        )
        again = await prerelease.open_blob("team/app", base.manifest.layers[0].digest)
        await again.aclose()
        print(f"   pulled again: the first layer now comes from {again.source!r}")

        # 2. Push to Prerelease an image whose base layers live only in Release.
        base_image = random_image(layers=2, layer_size=32 * 1024, seed=2)
        app = random_image(layers=1, layer_size=2048, seed=3, base=base_image)
        await push_image(release, "team/app", base_image, "base")
        await prerelease.push_blob(
            "team/app",
            app.config,
            digest=app.manifest.config.digest,  # type: ignore[union-attr]
        )
        top = app.manifest.layers[2]
        await prerelease.push_blob("team/app", app.layers[2], digest=top.digest)
        await prerelease.push_manifest(
            "team/app", app.manifest.data, media_type=app.manifest.media_type, tag="2.0-rc1"
        )
        report = await prerelease.check("team/app", "2.0-rc1")
        table(
            "2. push team/app:2.0-rc1 to prerelease (base layers only in release): accepted",
            ("item", "digest", "resolves at"),
            rows_of(report, "MISSING"),
        )

        # 3. Remove the connector: the manifest dangles.
        prerelease.connectors.clear()
        report = await prerelease.check("team/app", "2.0-rc1")
        table(
            f"3. connector removed: check() ok={report.ok}, {len(report.missing)} missing",
            ("item", "digest", "resolves at"),
            rows_of(report, "MISSING (dangling)"),
        )

    # 4. The same with pin_on_push: the push copies what lives only in Release.
    async with (
        registry("release") as release,
        registry("prerelease", RegistryConnector(release), pin=True) as prerelease,
    ):
        await push_image(release, "team/app", base_image, "base")
        await prerelease.push_blob(
            "team/app",
            app.config,
            digest=app.manifest.config.digest,  # type: ignore[union-attr]
        )
        await prerelease.push_blob("team/app", app.layers[2], digest=top.digest)
        await prerelease.push_manifest(
            "team/app", app.manifest.data, media_type=app.manifest.media_type, tag="2.0-rc1"
        )
        prerelease.connectors.clear()
        report = await prerelease.check("team/app", "2.0-rc1")
        table(
            f"4. with pin_on_push, connector removed: check() ok={report.ok}",
            ("item", "digest", "resolves at"),
            rows_of(report, "MISSING"),
        )
        stats = prerelease.stats
        print(
            f"\nprerelease stats: {stats.bytes_from_upstream['release']} bytes from release, "
            f"{sum(stats.upstream_requests.values())} upstream requests"
        )


if __name__ == "__main__":
    anyio.run(main)
