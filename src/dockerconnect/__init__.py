"""dockerconnect: several OCI/Docker registries behind one name.

A :class:`Resolver` is a registry with its own manifest and blob stores and an
ordered list of connectors (another registry in the process through
:class:`RegistryConnector`, or an external one through
:class:`dockerconnect.http.HttpConnector`). It resolves manifests and blobs
in priority order, verifies every byte against its digest, and caches what
it fetches according to a :class:`CachingPolicy`.
"""

import importlib
from typing import TYPE_CHECKING, Any

from dockerconnect import errors
from dockerconnect._descriptor import Annotations, Descriptor, Platform
from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._events import Event, Observer
from dockerconnect._filesystem import FilesystemBlobStore, FilesystemManifestStore
from dockerconnect._manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_MEDIA_TYPES,
    OCI_ARTIFACT_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
)
from dockerconnect._memory import MemoryBlobStore, MemoryManifestStore
from dockerconnect._policy import CachingPolicy, StaleDecision, TagDecision
from dockerconnect._protocols import (
    BlobStore,
    BlobWriter,
    CachedBlob,
    CachedManifest,
    Connector,
    IntegrityEntry,
    IntegrityReport,
    ManifestStore,
    ManifestUsageLog,
    ReferrersIndex,
    ReferrersSource,
    Registry,
    TagRecord,
    UsageLog,
)
from dockerconnect._reference import Reference, validate_repository, validate_tag
from dockerconnect._registry_connector import RegistryConnector
from dockerconnect._resolve.health import ConnectorHealth, HealthPolicy
from dockerconnect._resolve.retention import PruneReport, RetentionPolicy
from dockerconnect._resolver import Resolver
from dockerconnect._stats import ResolverStats
from dockerconnect._stream import BlobStream
from dockerconnect.errors import DockerConnectError

if TYPE_CHECKING:
    from dockerconnect.layout import OciLayoutConnector, export_layout

__version__ = "0.1.0"

#: Public names imported on first use: a server that neither reads nor writes
#: OCI layouts does not pay for the layout room (see :func:`__getattr__`).
_LAZY = {
    "OciLayoutConnector": "dockerconnect.layout",
    "export_layout": "dockerconnect.layout",
}


def __getattr__(name: str) -> Any:
    """``dockerconnect.OciLayoutConnector`` and ``dockerconnect.export_layout``,
    imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dockerconnect' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_MEDIA_TYPES",
    "OCI_ARTIFACT_MANIFEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Observer",
    "Annotations",
    "BlobStore",
    "BlobStream",
    "BlobWriter",
    "CachedBlob",
    "CachedManifest",
    "CachingPolicy",
    "Connector",
    "ConnectorHealth",
    "Descriptor",
    "Digest",
    "DigestVerifier",
    "DockerConnectError",
    "Event",
    "FilesystemBlobStore",
    "FilesystemManifestStore",
    "HealthPolicy",
    "IntegrityEntry",
    "IntegrityReport",
    "Manifest",
    "ManifestStore",
    "ManifestUsageLog",
    "MemoryBlobStore",
    "MemoryManifestStore",
    "OciLayoutConnector",
    "Platform",
    "PruneReport",
    "Reference",
    "ReferrersIndex",
    "ReferrersSource",
    "Registry",
    "RegistryConnector",
    "Resolver",
    "ResolverStats",
    "RetentionPolicy",
    "StaleDecision",
    "TagDecision",
    "TagRecord",
    "UsageLog",
    "errors",
    "export_layout",
    "validate_repository",
    "validate_tag",
]
