"""What embedders and plugin authors test with.

- Random images, indexes and artifacts of any shape and size
  (:func:`random_image`, :func:`random_index`, :func:`random_artifact`) and
  an OCI layout writer for real clients.
- An in-process fake upstream with fault injection (:class:`FakeUpstream`)
  and a :class:`CountingConnector` that counts what reached any connector.
- Conformance suites for stores (:class:`BlobStoreConformance`,
  :class:`ManifestStoreConformance`): subclass one, override its factory
  fixture, and pytest proves your backend; :class:`ConnectorConformance`
  does the same for connectors.
- The real CNCF distribution registry for end-to-end tests
  (:class:`DistributionRegistry`), and pushing content into a registry with
  the real ``skopeo`` (:func:`skopeo_push`) or the HTTP API (:func:`push_content`).
"""

from typing import TYPE_CHECKING, Any

from dockerconnect.testing._distribution import (
    DistributionRegistry,
    TokenAuthConfig,
    ToolNotInstalled,
    push_content,
    skopeo_push,
)
from dockerconnect.testing._fake import CountingConnector, FakeUpstream, Faults
from dockerconnect.testing._images import (
    RandomImage,
    RandomIndex,
    random_artifact,
    random_blob,
    random_image,
    random_index,
    write_oci_layout,
)

if TYPE_CHECKING:
    from dockerconnect.testing._connector_conformance import (
        ConnectorConformance,
        ConnectorFactory,
    )
    from dockerconnect.testing._store_conformance import (
        BlobStoreConformance,
        BlobStoreFactory,
        ManifestStoreConformance,
        ManifestStoreFactory,
    )

# The conformance suites need pytest; importing them lazily keeps the rest of
# this module (random images, the fake upstream) usable without it.
_LAZY = {
    "BlobStoreConformance": "_store_conformance",
    "BlobStoreFactory": "_store_conformance",
    "ManifestStoreConformance": "_store_conformance",
    "ManifestStoreFactory": "_store_conformance",
    "ConnectorConformance": "_connector_conformance",
    "ConnectorFactory": "_connector_conformance",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BlobStoreConformance",
    "BlobStoreFactory",
    "ConnectorConformance",
    "ConnectorFactory",
    "CountingConnector",
    "DistributionRegistry",
    "FakeUpstream",
    "Faults",
    "ManifestStoreConformance",
    "ManifestStoreFactory",
    "RandomImage",
    "RandomIndex",
    "TokenAuthConfig",
    "ToolNotInstalled",
    "push_content",
    "random_artifact",
    "random_blob",
    "random_image",
    "random_index",
    "skopeo_push",
    "write_oci_layout",
]
