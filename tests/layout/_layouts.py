"""Writing and checking OCI image layouts in tests, independently of the library's writer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dockerconnect import MANIFEST_MEDIA_TYPES, OCI_INDEX, Descriptor, Digest, Manifest
from dockerconnect.layout import REF_NAME
from dockerconnect.testing import RandomImage, RandomIndex

Content = RandomImage | RandomIndex


def write_blob(root: Path, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    path = root / "blobs" / "sha256" / digest.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_content(root: Path, content: Content | Manifest) -> None:
    """Every blob and manifest of ``content`` under ``blobs/``."""
    if isinstance(content, Manifest):
        write_blob(root, content.data)
        return
    for data in content.blobs.values():
        write_blob(root, data)
    for manifest in content.manifests.values():
        write_blob(root, manifest.data)


def entry(manifest: Manifest, name: str | None = None, **extra: Any) -> dict[str, Any]:
    out = manifest.descriptor().to_dict()
    if name is not None:
        out["annotations"] = {REF_NAME: name}
    out.update(extra)
    return out


def write_index(root: Path, entries: Iterable[dict[str, Any]]) -> None:
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
    (root / "index.json").write_text(json.dumps(doc, indent=2))


def write_layout(root: Path, tagged: dict[str, Content], *, extra: Iterable[Manifest] = ()) -> Path:
    """A layout holding ``tagged`` (ref.name -> content) and unnamed ``extra`` manifests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for name, content in tagged.items():
        write_content(root, content)
        entries.append(entry(content.manifest, name))
    for manifest in extra:
        write_content(root, manifest)
        entries.append(entry(manifest))
    write_index(root, entries)
    return root


def check_layout(root: Path, *, partial: bool = False) -> dict[str, Any]:
    """Assert ``root`` is a layout that does not lie; return its index.json.

    Every blob's bytes hash to its name, and everything index.json names is
    there, with every manifest's references, down to each layer. With
    ``partial``, an index may lack children (an export limited to platforms).
    """
    assert json.loads((root / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    for path in (root / "blobs").rglob("*"):
        if path.is_file():
            assert hashlib.new(path.parent.name, path.read_bytes()).hexdigest() == path.name
    index_path = root / "index.json"
    if not index_path.exists():
        return {"manifests": []}
    index: dict[str, Any] = json.loads(index_path.read_text())
    pending = [(Descriptor.from_dict(e), False) for e in index["manifests"]]
    while pending:
        descriptor, optional = pending.pop()
        path = root / "blobs" / descriptor.digest.algorithm / descriptor.digest.hex
        if optional and not path.exists():
            continue
        data = path.read_bytes()
        assert len(data) == descriptor.size
        if descriptor.media_type in MANIFEST_MEDIA_TYPES:
            manifest = Manifest.parse(data, descriptor.media_type)
            pending.extend((child, partial) for child in manifest.manifests)
            for b in manifest.blobs():
                assert len(blob(root, b.digest)) == b.size
    return index


def blob(root: Path, digest: Digest) -> bytes:
    return (root / "blobs" / digest.algorithm / digest.hex).read_bytes()


def blob_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file()}
