"""Descriptors and platforms (OCI image-spec descriptor.md, image-index.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from dockerconnect._digest import Digest, as_digest
from dockerconnect._json import JsonInvalid, load_json
from dockerconnect.errors import DockerConnectError, InvalidInput, ManifestInvalid

__all__ = ["Annotations", "Descriptor", "Platform"]


class Annotations(Mapping[str, str]):
    """An immutable, hashable ``str -> str`` mapping (descriptor annotations)."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        mapping: dict[str, str] = {}
        for key, value in pairs:
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidInput("annotations must map strings to strings")
            mapping[key] = value
        self._map = mapping
        self._items = tuple(sorted(mapping.items()))

    def __getitem__(self, key: str) -> str:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Annotations):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._map == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Annotations({self._map!r})"


def _annotations(value: Mapping[str, str] | None) -> Annotations | None:
    if value is None or isinstance(value, Annotations):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput("annotations must be a mapping of strings to strings")
    return Annotations(value)


# Architecture spellings that mean the same machine (containerd's platforms
# normalisation): matching compares the normalised (os, architecture, variant).
_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}


@attrs.frozen(slots=True)
class Platform:
    """The platform an index entry runs on (OCI image-index.md ``platform``)."""

    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @classmethod
    def parse(cls, value: str) -> Platform:
        """Parse ``os/arch[/variant]`` such as ``linux/arm64/v8``."""
        if not isinstance(value, str):
            raise InvalidInput(f"platform must be a string, not {type(value).__name__}")
        parts = value.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise InvalidInput(f"invalid platform {value!r}: expected 'os/arch[/variant]'")
        os_, arch = parts[0].lower(), parts[1].lower()
        variant = parts[2].lower() if len(parts) == 3 else None
        return cls(architecture=arch, os=os_, variant=variant)

    @classmethod
    def from_dict(cls, data: Any) -> Platform:
        """From the JSON object of a descriptor's ``platform`` field."""
        if not isinstance(data, dict):
            raise ManifestInvalid("platform must be an object")
        arch, os_ = data.get("architecture"), data.get("os")
        if not isinstance(arch, str) or not isinstance(os_, str):
            raise ManifestInvalid("platform needs string 'architecture' and 'os'")
        variant = data.get("variant")
        os_version = data.get("os.version")
        features = data.get("os.features", [])
        if variant is not None and not isinstance(variant, str):
            raise ManifestInvalid("platform 'variant' must be a string")
        if os_version is not None and not isinstance(os_version, str):
            raise ManifestInvalid("platform 'os.version' must be a string")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ManifestInvalid("platform 'os.features' must be a list of strings")
        return cls(arch, os_, variant or None, os_version, tuple(features))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        return out

    def normalized(self) -> tuple[str, str, str | None]:
        """``(os, architecture, variant)`` with the usual aliases folded.

        ``arm64`` and ``arm64/v8`` are the same; ``arm`` without a variant is
        ``arm/v7``; ``x86_64`` is ``amd64``.
        """
        os_ = self.os.lower()
        arch = self.architecture.lower()
        variant = self.variant.lower() if self.variant else None
        if arch in _ARCH_ALIASES:
            arch, implied = _ARCH_ALIASES[arch]
            variant = variant or implied
        if arch == "arm64" and variant in ("v8", "8"):
            variant = None
        elif arch == "arm":
            variant = {"5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant or "", variant)
            variant = variant or "v7"
        elif arch == "amd64" and variant == "v1":
            variant = None
        return os_, arch, variant

    def matches(self, other: Platform | str) -> bool:
        """Whether both name the same platform after normalisation."""
        if isinstance(other, str):
            other = Platform.parse(other)
        return self.normalized() == other.normalized()

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@attrs.frozen(slots=True)
class Descriptor:
    """A typed pointer to content (OCI image-spec descriptor.md).

    Hashable: ``annotations`` is held as an immutable :class:`Annotations`.
    """

    media_type: str
    digest: Digest = attrs.field(converter=as_digest)
    size: int
    urls: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=tuple)
    annotations: Annotations | None = attrs.field(
        default=None, kw_only=True, converter=_annotations
    )
    platform: Platform | None = attrs.field(default=None, kw_only=True)
    artifact_type: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.media_type, str) or not self.media_type:
            raise InvalidInput("descriptor media type must be a non-empty string")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidInput(f"descriptor size must be a non-negative integer, not {self.size!r}")
        if not all(isinstance(u, str) for u in self.urls):
            raise InvalidInput("descriptor urls must be strings")

    def check_held(self, held: Descriptor) -> None:
        """Raise ``ManifestInvalid`` unless ``held`` (what a store or connector
        says it has under this digest) has the size this descriptor declares.

        A digest fixes the bytes, so a declared size that differs from the
        blob's real size can only be wrong: a client that pulls the manifest
        checks both and fails. Checking at push time refuses such a manifest
        (``MANIFEST_INVALID``) instead of storing one that no client can pull.
        """
        if held.digest != self.digest:
            raise InvalidInput(f"{held.digest} is not the content of descriptor {self.digest}")
        if held.size != self.size:
            raise ManifestInvalid(
                f"descriptor {self.digest} declares {self.size} bytes, "
                f"but the blob has {held.size}",
                digest=str(self.digest),
            )

    @classmethod
    def parse(cls, data: str | bytes) -> Descriptor:
        """From a descriptor's JSON text; raises :class:`ManifestInvalid`.

        Read as strictly as :meth:`Manifest.parse` reads a manifest: no
        duplicate keys, bounded nesting.
        """
        if not isinstance(data, (str, bytes)):
            raise ManifestInvalid(f"descriptor must be str or bytes, not {type(data).__name__}")
        try:
            obj = load_json(data)
        except JsonInvalid as exc:
            raise ManifestInvalid(f"descriptor is not JSON: {exc}") from exc
        return cls.from_dict(obj)

    def to_json(self) -> str:
        """The JSON text form; ``Descriptor.parse(d.to_json()) == d``."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Descriptor:
        """From a descriptor's JSON object; raises :class:`ManifestInvalid`."""
        if not isinstance(data, dict):
            raise ManifestInvalid("descriptor must be an object")
        media_type = data.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestInvalid("descriptor needs a string 'mediaType'")
        digest = data.get("digest")
        if not isinstance(digest, str):
            raise ManifestInvalid("descriptor needs a string 'digest'")
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestInvalid(f"descriptor 'size' must be a non-negative integer: {size!r}")
        urls = data.get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ManifestInvalid("descriptor 'urls' must be a list of strings")
        annotations = data.get("annotations")
        if annotations is not None and (
            not isinstance(annotations, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            raise ManifestInvalid("descriptor 'annotations' must map strings to strings")
        platform = data.get("platform")
        artifact_type = data.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ManifestInvalid("descriptor 'artifactType' must be a string")
        try:
            return cls(
                media_type,
                digest,
                size,
                urls=tuple(urls),
                annotations=annotations,
                platform=Platform.from_dict(platform) if platform is not None else None,
                artifact_type=artifact_type,
            )
        except ManifestInvalid:
            raise
        except DockerConnectError as exc:
            raise ManifestInvalid(f"invalid descriptor: {exc.message}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON object form (round-trips through :meth:`from_dict`)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        return out
