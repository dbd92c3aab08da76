"""Helpers for the referrers tests: an upstream with the referrers API, tag-schema
indexes, artifacts that refer to an image, a registry that hides ``referrers``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from dockerconnect import OCI_INDEX, Descriptor, Digest, Manifest, Registry
from dockerconnect.testing import FakeUpstream, RandomImage, random_artifact

SBOM = "application/vnd.example.sbom+json"
SIG = "application/vnd.example.signature"


def artifact(subject: Manifest, kind: str = SBOM, *, seed: int) -> RandomImage:
    """An OCI 1.1 artifact of type ``kind`` whose subject is ``subject``."""
    return random_artifact(subject, artifact_type=kind, seed=seed, annotations={"seed": str(seed)})


def tag_schema_index(*referrers: Manifest | Descriptor) -> Manifest:
    """The index a client pushes under ``<alg>-<hex>`` when a registry has no referrers API."""
    entries = [r.referrer() if isinstance(r, Manifest) else r for r in referrers]
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_dict() for d in entries]}
    return Manifest.parse(json.dumps(doc).encode(), OCI_INDEX)


def schema_tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


def put_tag_schema(
    upstream: FakeUpstream, repository: str, subject: Manifest, *refs: RandomImage
) -> None:
    """Store ``refs`` in ``upstream`` and list them in the tag schema, as for docker-registry."""
    for ref in refs:
        upstream.add(repository, ref)
    upstream.add(
        repository,
        tag_schema_index(*(r.manifest for r in refs)),
        tag=schema_tag(subject.digest),
    )


class ApiUpstream(FakeUpstream):
    """A :class:`FakeUpstream` with the referrers API (``has_api=False``: it answers
    ``None``, as an upstream without it). ``calls`` counts what reached it."""

    def __init__(self, name: str = "upstream", *, has_api: bool = True, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.has_api = has_api
        self.calls: Counter[str] = Counter()

    async def get_manifest(self, repository: str, reference: str, **kwargs: Any) -> Manifest | None:
        self.calls["get_manifest"] += 1
        return await super().get_manifest(repository, reference, **kwargs)

    async def referrers(
        self, repository: str, digest: Digest, *, artifact_type: str | None = None
    ) -> list[Descriptor] | None:
        self.calls["referrers"] += 1
        self._check()
        if not self.has_api:
            return None
        found = [
            m.referrer()
            for (repo, _), m in sorted(self._manifests.items(), key=lambda kv: str(kv[0][1]))
            if repo == repository and m.subject is not None and m.subject.digest == digest
        ]
        return [d for d in found if artifact_type in (None, d.artifact_type)]


class WithoutReferrers:
    """A Registry wrapper that hides ``referrers``: a registry without the API."""

    def __init__(self, inner: Registry) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        if name == "referrers":
            raise AttributeError(name)
        return getattr(self._inner, name)
