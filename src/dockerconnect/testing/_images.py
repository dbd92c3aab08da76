"""Random images and indexes of any shape and size, generated, never checked in."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import attrs

from dockerconnect._descriptor import Descriptor, Platform
from dockerconnect._digest import Digest
from dockerconnect._manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
)

__all__ = [
    "RandomImage",
    "RandomIndex",
    "random_artifact",
    "random_blob",
    "random_image",
    "random_index",
    "write_oci_layout",
]

LayerFormat = Literal["tar+gzip", "tar", "raw"]

_LAYER_TYPES = {
    (OCI_MANIFEST, "tar+gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    (OCI_MANIFEST, "tar"): "application/vnd.oci.image.layer.v1.tar",
    (OCI_MANIFEST, "raw"): "application/vnd.oci.image.layer.v1.tar",
    (DOCKER_MANIFEST, "tar+gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    (DOCKER_MANIFEST, "tar"): "application/vnd.docker.image.rootfs.diff.tar",
    (DOCKER_MANIFEST, "raw"): "application/vnd.docker.image.rootfs.diff.tar",
}
_CONFIG_TYPES = {
    OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
    DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
}


@attrs.frozen(slots=True, eq=False)
class RandomImage:
    """A generated image: its manifest and every blob it references."""

    manifest: Manifest
    config: bytes = attrs.field(repr=False)
    layers: tuple[bytes, ...] = attrs.field(repr=False)
    platform: Platform | None = None

    @property
    def blobs(self) -> dict[Digest, bytes]:
        """Config and layers by digest."""
        assert self.manifest.config is not None
        out = {self.manifest.config.digest: self.config}
        for desc, data in zip(self.manifest.layers, self.layers, strict=True):
            out[desc.digest] = data
        return out

    @property
    def manifests(self) -> dict[Digest, Manifest]:
        return {self.manifest.digest: self.manifest}

    @property
    def size(self) -> int:
        """Bytes of manifest and blobs together."""
        return len(self.manifest.data) + sum(len(b) for b in self.blobs.values())


@attrs.frozen(slots=True, eq=False)
class RandomIndex:
    """A generated index and its child images."""

    manifest: Manifest
    children: tuple[RandomImage, ...]

    @property
    def blobs(self) -> dict[Digest, bytes]:
        """Every child's config and layers by digest."""
        out: dict[Digest, bytes] = {}
        for child in self.children:
            out.update(child.blobs)
        return out

    @property
    def manifests(self) -> dict[Digest, Manifest]:
        """The index and each child manifest by digest."""
        out = {self.manifest.digest: self.manifest}
        for child in self.children:
            out[child.manifest.digest] = child.manifest
        return out

    @property
    def size(self) -> int:
        return len(self.manifest.data) + sum(c.size for c in self.children)


def random_blob(size: int, rng: random.Random | int | None = None) -> bytes:
    """``size`` random bytes (deterministic for a given seed)."""
    r = rng if isinstance(rng, random.Random) else random.Random(rng)
    return _randbytes(r, size)


def _randbytes(rng: random.Random, size: int) -> bytes:
    # Random.randbytes takes the bit count as a C int: draw large sizes in pieces.
    piece = 64 * 1024 * 1024
    if size <= piece:
        return rng.randbytes(size)
    return b"".join(rng.randbytes(min(piece, size - i)) for i in range(0, size, piece))


def _layer(size: int, rng: random.Random, fmt: LayerFormat, index: int) -> tuple[bytes, str]:
    """The layer bytes and its diff_id (digest of the uncompressed tar)."""
    payload = _randbytes(rng, size)
    if fmt == "raw":
        return payload, str(Digest.from_bytes(payload))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer{index}/data.bin")
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    if fmt == "tar":
        return tar_bytes, diff_id
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), diff_id


def _base_layers(
    base: RandomImage | None, media_type: str
) -> tuple[list[bytes], list[str], list[dict[str, object]]]:
    """The layers, diff IDs and layer descriptors an image built on ``base`` starts with."""
    if base is None:
        return [], [], []
    if base.manifest.media_type != media_type:
        raise ValueError("base must have the same manifest media type")
    diff_ids = list(json.loads(base.config)["rootfs"]["diff_ids"])
    return list(base.layers), diff_ids, [d.to_dict() for d in base.manifest.layers]


def _config(platform: Platform, rng: random.Random, diff_ids: list[str]) -> bytes:
    """An image config for ``platform`` with these layers, seeded by ``rng``."""
    doc = {
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [f"SEED={rng.getrandbits(32)}"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
    }
    return json.dumps(doc, sort_keys=True).encode()


def random_image(
    *,
    layers: int = 2,
    layer_size: int | Iterable[int] = 1024,
    seed: int | None = None,
    media_type: str = OCI_MANIFEST,
    platform: Platform | str = "linux/amd64",
    layer_format: LayerFormat = "tar+gzip",
    annotations: Mapping[str, str] | None = None,
    subject: Descriptor | None = None,
    base: RandomImage | None = None,
) -> RandomImage:
    """A valid image with ``layers`` random layers and a valid config.

    With ``base``, the image is built on top of it: ``base``'s layers come
    first (same digests), then ``layers`` new ones, as ``FROM base`` would.

    ``layer_size`` is one size for every layer or one per layer (the size of
    the random payload; tar and gzip framing add to it). ``layer_format``
    ``"raw"`` makes layers of exactly that many random bytes, for large blobs.
    ``media_type`` is ``OCI_MANIFEST`` or ``DOCKER_MANIFEST``.
    """
    if media_type not in _CONFIG_TYPES:
        raise ValueError(f"random_image makes OCI or Docker image manifests, not {media_type!r}")
    rng = random.Random(seed)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    sizes = [layer_size] * layers if isinstance(layer_size, int) else list(layer_size)
    if len(sizes) != layers:
        raise ValueError("layer_size must give one size per layer")
    blobs, diff_ids, base_descriptors = _base_layers(base, media_type)
    for i, size in enumerate(sizes):
        data, diff_id = _layer(size, rng, layer_format, i)
        blobs.append(data)
        diff_ids.append(diff_id)
    config = _config(plat, rng, diff_ids)
    layer_type = _LAYER_TYPES[(media_type, layer_format)]
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": _CONFIG_TYPES[media_type],
            "digest": str(Digest.from_bytes(config)),
            "size": len(config),
        },
        "layers": base_descriptors
        + [
            {"mediaType": layer_type, "digest": str(Digest.from_bytes(b)), "size": len(b)}
            for b in blobs[len(base_descriptors) :]
        ],
    }
    if subject is not None:
        doc["subject"] = subject.to_dict()
    if annotations:
        doc["annotations"] = dict(annotations)
    data = json.dumps(doc, indent=2).encode()
    return RandomImage(Manifest.parse(data, media_type), config, tuple(blobs), plat)


#: The OCI empty descriptor's media type and content (image-spec manifest.md,
#: "Guidance for an Empty Descriptor").
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONTENT = b"{}"


def random_artifact(
    subject: Manifest | Descriptor | None,
    *,
    artifact_type: str | None = "application/vnd.example.sbom+json",
    config_media_type: str = EMPTY_MEDIA_TYPE,
    payload_size: int = 256,
    seed: int | None = None,
    annotations: Mapping[str, str] | None = None,
) -> RandomImage:
    """An OCI 1.1 artifact (a signature, an SBOM) that refers to ``subject``.

    An image manifest with ``artifactType``, the empty config and one random
    blob, as ``oras`` and ``regctl artifact put`` push them. With
    ``artifact_type=None`` the type is carried by ``config_media_type``
    instead, as older tools (cosign) do. ``subject`` may be ``None`` for an
    artifact that refers to nothing.
    """
    rng = random.Random(seed)
    payload = _randbytes(rng, payload_size)
    config = (
        EMPTY_CONTENT
        if config_media_type == EMPTY_MEDIA_TYPE
        else b'{"seed":%d}' % (rng.getrandbits(32))
    )
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": config_media_type,
            "digest": str(Digest.from_bytes(config)),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": str(Digest.from_bytes(payload)),
                "size": len(payload),
            }
        ],
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    if subject is not None:
        pointer = subject.descriptor() if isinstance(subject, Manifest) else subject
        doc["subject"] = Descriptor(pointer.media_type, pointer.digest, pointer.size).to_dict()
    if annotations:
        doc["annotations"] = dict(annotations)
    data = json.dumps(doc, indent=2).encode()
    return RandomImage(Manifest.parse(data, OCI_MANIFEST), config, (payload,))


def random_index(
    *,
    platforms: Iterable[str] = ("linux/amd64", "linux/arm64/v8"),
    layers: int = 2,
    layer_size: int = 1024,
    seed: int | None = None,
    media_type: str = OCI_INDEX,
    layer_format: LayerFormat = "tar+gzip",
) -> RandomIndex:
    """An index (``OCI_INDEX`` or ``DOCKER_MANIFEST_LIST``) with one random image
    per platform."""
    if media_type not in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        raise ValueError(f"random_index makes indexes, not {media_type!r}")
    child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
    rng = random.Random(seed)
    children = tuple(
        random_image(
            layers=layers,
            layer_size=layer_size,
            seed=rng.getrandbits(64),
            media_type=child_type,
            platform=p,
            layer_format=layer_format,
        )
        for p in platforms
    )
    entries = []
    for child in children:
        assert child.platform is not None
        entry = child.manifest.descriptor().to_dict()
        entry["platform"] = child.platform.to_dict()
        entries.append(entry)
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    data = json.dumps(doc, indent=2).encode()
    return RandomIndex(Manifest.parse(data, media_type), children)


def write_oci_layout(
    path: str | os.PathLike[str], content: RandomImage | RandomIndex, *, tag: str = "latest"
) -> Path:
    """Write ``content`` as an OCI image layout (image-spec image-layout.md).

    The result can be pushed with ``skopeo copy oci:PATH:TAG docker://…``.
    """
    root = Path(path)
    blobs_dir = root / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for digest, data in {**content.blobs}.items():
        (blobs_dir / digest.hex).write_bytes(data)
    for digest, manifest in content.manifests.items():
        (blobs_dir / digest.hex).write_bytes(manifest.data)
    top = content.manifest.descriptor().to_dict()
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}
    (root / "index.json").write_text(json.dumps(index))
    return root
