"""Manifests: image manifests, indexes and artifact manifests, kept as exact bytes."""

from __future__ import annotations

from typing import Any

import attrs

from dockerconnect._descriptor import Annotations, Descriptor
from dockerconnect._digest import Digest
from dockerconnect._json import JsonInvalid, load_json
from dockerconnect.errors import ManifestInvalid

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "OCI_ARTIFACT_MANIFEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Manifest",
    "base_media_type",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

#: Every manifest media type this library parses, most preferred first (the
#: ``Accept`` list a client sends).
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
    OCI_ARTIFACT_MANIFEST,
)
INDEX_MEDIA_TYPES: frozenset[str] = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

#: Manifests larger than this are refused (distribution's own limit is 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def base_media_type(value: str) -> str:
    """A media type without parameters, lowercased (``a/b; charset=x`` -> ``a/b``)."""
    return value.split(";", 1)[0].strip().lower()


@attrs.frozen(slots=True, eq=False)
class Manifest:
    """A parsed manifest that keeps its exact bytes.

    ``data`` is never re-serialised: ``digest`` is always the sha256 of
    ``data``. Build one with :meth:`parse`.
    """

    data: bytes = attrs.field(repr=False)
    media_type: str
    digest: Digest
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: Annotations | None = None

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """Parse and validate a manifest document.

        Accepts Docker schema 2 manifests and manifest lists, OCI image
        manifests and indexes, and OCI artifact manifests. Raises
        :class:`ManifestInvalid` for Docker schema 1, non-JSON, a wrong
        ``schemaVersion``, missing or invalid descriptors, a ``media_type``
        that disagrees with the document's own ``mediaType``, and documents
        over :data:`MAX_MANIFEST_SIZE`. Untrusted JSON is read strictly: a
        key that appears twice in one object (which other parsers would read
        differently) and nesting deeper than 64 levels are ``ManifestInvalid``
        too, never a ``RecursionError``.
        """
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise ManifestInvalid(f"manifest must be bytes, not {type(data).__name__}")
        if len(data) > MAX_MANIFEST_SIZE:
            raise ManifestInvalid(
                f"manifest is {len(data)} bytes, larger than the {MAX_MANIFEST_SIZE} byte limit"
            )
        given = base_media_type(media_type) if media_type is not None else None
        if given in _SCHEMA1:
            raise ManifestInvalid("Docker schema 1 manifests are not supported")
        try:
            doc = load_json(data)
        except JsonInvalid as exc:
            raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ManifestInvalid("manifest must be a JSON object")

        kind = _kind(doc, given, media_type)
        fields = _fields(doc, kind)
        return cls(
            data=data,
            media_type=kind,
            digest=Digest.from_bytes(data),
            **fields,
        )

    @property
    def is_index(self) -> bool:
        """Whether this is an index (manifest list) of other manifests."""
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> Descriptor:
        """A descriptor pointing at this manifest."""
        return Descriptor(
            self.media_type, self.digest, len(self.data), artifact_type=self.artifact_type
        )

    def referrer(self) -> Descriptor:
        """This manifest's descriptor as a referrer of its ``subject``.

        What the OCI distribution-spec 1.1 "Listing Referrers" index holds:
        ``media_type``, ``digest`` and ``size``, ``artifact_type`` (the
        manifest's ``artifactType``, else its config's media type) and the
        manifest's ``annotations``. Raises ``ManifestInvalid`` for a manifest
        without a ``subject``: it refers to nothing.
        """
        if self.subject is None:
            raise ManifestInvalid(
                f"manifest {self.digest} has no subject, so it is not a referrer",
                digest=str(self.digest),
            )
        artifact_type = self.artifact_type
        if artifact_type is None and self.config is not None:
            artifact_type = self.config.media_type
        return Descriptor(
            self.media_type,
            self.digest,
            len(self.data),
            annotations=self.annotations,
            artifact_type=artifact_type,
        )

    def references(self) -> tuple[Descriptor, ...]:
        """Every descriptor this manifest points at: config, layers, children, subject."""
        refs: list[Descriptor] = []
        if self.config is not None:
            refs.append(self.config)
        refs.extend(self.layers)
        refs.extend(self.manifests)
        if self.subject is not None:
            refs.append(self.subject)
        return tuple(refs)

    def blobs(self) -> tuple[Descriptor, ...]:
        """The blobs (config and layers) an image manifest needs; empty for an index."""
        if self.config is None:
            return self.layers
        return (self.config, *self.layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.data == other.data and self.media_type == other.media_type

    def __hash__(self) -> int:
        return hash((self.digest, self.media_type))


def _kind(doc: dict[str, Any], given: str | None, media_type: str | None) -> str:
    """The manifest's media type, checked against the one it was given as."""
    own = doc.get("mediaType")
    if own is not None and not isinstance(own, str):
        raise ManifestInvalid("manifest 'mediaType' must be a string")
    if own in _SCHEMA1 or (doc.get("schemaVersion") == 1 and own is None):
        raise ManifestInvalid("Docker schema 1 manifests are not supported")
    if given is not None and own is not None and base_media_type(own) != given:
        raise ManifestInvalid(
            f"manifest declares mediaType {own!r} but was given as {media_type!r}"
        )
    kind = base_media_type(own) if own is not None else given or _guess(doc)
    if kind not in MANIFEST_MEDIA_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {kind!r}")

    if kind != OCI_ARTIFACT_MANIFEST:
        version = doc.get("schemaVersion")
        if version != 2 or isinstance(version, bool):
            raise ManifestInvalid(f"manifest 'schemaVersion' must be 2, not {version!r}")
    if kind in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST) and own is None:
        raise ManifestInvalid(f"Docker manifests must declare their mediaType ({kind})")
    return kind


def _fields(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """The descriptors, subject, artifact type and annotations of a ``kind`` document."""
    fields: dict[str, Any] = {}
    if kind in INDEX_MEDIA_TYPES:
        fields["manifests"] = _descriptor_list(doc, "manifests", required=True)
    elif kind == OCI_ARTIFACT_MANIFEST:
        fields["layers"] = _descriptor_list(doc, "blobs", required=False)
    else:
        config = doc.get("config")
        if config is None:
            raise ManifestInvalid("image manifest needs a 'config' descriptor")
        fields["config"] = _descriptor(config, "config")
        fields["layers"] = _descriptor_list(doc, "layers", required=True)
    if "subject" in doc and doc["subject"] is not None:
        fields["subject"] = _descriptor(doc["subject"], "subject")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("manifest 'artifactType' must be a string")
    fields["artifact_type"] = artifact_type
    annotations = doc.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ManifestInvalid("manifest 'annotations' must map strings to strings")
        fields["annotations"] = Annotations(annotations)
    return fields


def _guess(doc: dict[str, Any]) -> str:
    # An OCI manifest may omit mediaType (image-spec: "SHOULD be used"); infer it.
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    if "blobs" in doc:
        return OCI_ARTIFACT_MANIFEST
    raise ManifestInvalid("cannot tell the manifest's kind: no mediaType, config or manifests")


def _descriptor(value: Any, where: str) -> Descriptor:
    try:
        return Descriptor.from_dict(value)
    except ManifestInvalid as exc:
        raise ManifestInvalid(f"invalid {where} descriptor: {exc.message}") from exc


def _descriptor_list(doc: dict[str, Any], key: str, *, required: bool) -> tuple[Descriptor, ...]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ManifestInvalid(f"manifest needs a '{key}' list")
        return ()
    if not isinstance(value, list):
        raise ManifestInvalid(f"manifest '{key}' must be a list")
    return tuple(_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))
