"""The errors dockerconnect raises, each carrying its OCI distribution error code.

Every error knows the code an HTTP layer puts in the OCI error body
(``.code``, from the distribution-spec "Error Codes" table) and the HTTP
status it maps to (``.status``), so an embedding turns any error into a
response without a table of its own::

    DockerConnectError                    UNKNOWN                 500
    ├── InvalidInput (also ValueError)    UNKNOWN                 400
    │   ├── NameInvalid                   NAME_INVALID            400
    │   ├── TagInvalid                    TAG_INVALID             400
    │   ├── DigestInvalid                 DIGEST_INVALID          400
    │   ├── ManifestInvalid               MANIFEST_INVALID        400
    │   ├── ManifestBlobUnknown           MANIFEST_BLOB_UNKNOWN   400
    │   ├── BlobUploadInvalid             BLOB_UPLOAD_INVALID     400
    │   ├── PaginationInvalid             PAGINATION_NUMBER_INVALID 400
    │   └── RangeInvalid                  RANGE_INVALID           416
    ├── NotFound                          UNKNOWN                 404
    │   ├── ManifestUnknown               MANIFEST_UNKNOWN        404
    │   ├── BlobUnknown                   BLOB_UNKNOWN            404
    │   ├── NameUnknown                   NAME_UNKNOWN            404
    │   └── BlobUploadUnknown             BLOB_UPLOAD_UNKNOWN     404
    ├── DigestMismatch                    DIGEST_INVALID          400
    │   └── SizeInvalid                   SIZE_INVALID            400
    ├── Unsupported                       UNSUPPORTED             400
    ├── ResolverClosed (also RuntimeError) UNKNOWN                500
    ├── StorageError                      UNKNOWN                 500
    └── UpstreamError                     UNKNOWN                 502
        ├── Unauthorized                  UNAUTHORIZED            401
        ├── Denied                        DENIED                  403
        ├── TooManyRequests               TOOMANYREQUESTS         429
        ├── UpstreamDigestMismatch        DIGEST_INVALID          502
        │   (also a DigestMismatch: a connector sent wrong bytes)
        ├── UpstreamTimeout               UNKNOWN                 504
        ├── ListingTooLarge               UNKNOWN                 502
        └── ConnectorCycle                UNKNOWN                 508

Errors carry ``repository``, ``digest`` and ``connector`` where they apply,
and ``retryable`` says whether asking again later could help. Exceptions of
other libraries (``httpx``, ``OSError``) never leave the public API untranslated;
the original stays reachable as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from dockerconnect._digest import Digest

__all__ = [
    "BlobUnknown",
    "BlobUploadInvalid",
    "BlobUploadUnknown",
    "ConnectorCycle",
    "Denied",
    "DigestInvalid",
    "DigestMismatch",
    "DockerConnectError",
    "InvalidInput",
    "ListingTooLarge",
    "ManifestBlobUnknown",
    "ManifestInvalid",
    "ManifestUnknown",
    "NameInvalid",
    "NameUnknown",
    "NotFound",
    "PaginationInvalid",
    "RangeInvalid",
    "ResolverClosed",
    "SizeInvalid",
    "StorageError",
    "TagInvalid",
    "TooManyRequests",
    "Unauthorized",
    "Unsupported",
    "UpstreamDigestMismatch",
    "UpstreamError",
    "UpstreamTimeout",
]


class DockerConnectError(Exception):
    """The root of every error dockerconnect raises.

    ``code`` is the OCI distribution error code and ``status`` the HTTP status
    an embedding should answer with. ``detail`` is a JSON-serialisable value
    for the ``detail`` field of an OCI error body.
    """

    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        repository: str | None = None,
        digest: Digest | str | None = None,
        connector: str | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.repository = repository
        self.digest = digest
        self.connector = connector
        self.detail = detail

    def __str__(self) -> str:
        parts = [self.message]
        context = []
        if self.connector is not None:
            context.append(f"connector={self.connector!r}")
        if self.repository is not None:
            context.append(f"repository={self.repository!r}")
        if self.digest is not None:
            context.append(f"digest={str(self.digest)!r}")
        if context:
            parts.append(f"({', '.join(context)})")
        return " ".join(parts)

    def to_oci(self) -> dict[str, Any]:
        """This error as one entry of an OCI error body's ``errors`` list."""
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return entry


class InvalidInput(DockerConnectError, ValueError):
    """Input that can never succeed: a malformed name, tag, digest or document."""

    status = 400


class NameInvalid(InvalidInput):
    """A repository name that breaks the distribution-spec name grammar."""

    code = "NAME_INVALID"


class TagInvalid(InvalidInput):
    """A tag that breaks ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``."""

    code = "TAG_INVALID"


class DigestInvalid(InvalidInput):
    """A digest string that breaks the OCI image-spec digest grammar."""

    code = "DIGEST_INVALID"


class ManifestInvalid(InvalidInput):
    """A manifest that cannot be parsed, or is of a kind we refuse (schema 1)."""

    code = "MANIFEST_INVALID"


class ManifestBlobUnknown(InvalidInput):
    """A pushed manifest references content that resolves nowhere.

    ``missing`` holds the descriptors that could not be found.
    """

    code = "MANIFEST_BLOB_UNKNOWN"

    def __init__(self, message: str = "", *, missing: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.missing = tuple(missing)
        if self.detail is None and self.missing:
            self.detail = [{"digest": str(getattr(d, "digest", d))} for d in self.missing]


class BlobUploadInvalid(InvalidInput):
    """An upload session used out of order (e.g. a chunk at the wrong offset)."""

    code = "BLOB_UPLOAD_INVALID"


class PaginationInvalid(InvalidInput):
    """A listing asked with a negative ``n`` or otherwise malformed paging."""

    code = "PAGINATION_NUMBER_INVALID"


class RangeInvalid(InvalidInput):
    """A read that starts past the end of a blob."""

    code = "RANGE_INVALID"
    status = 416


class NotFound(DockerConnectError):
    """Every source answered, and none has the item."""

    status = 404


class ManifestUnknown(NotFound):
    """No source has a manifest for this tag or digest."""

    code = "MANIFEST_UNKNOWN"


class BlobUnknown(NotFound):
    """No source has a blob with this digest."""

    code = "BLOB_UNKNOWN"


class NameUnknown(NotFound):
    """No source knows this repository."""

    code = "NAME_UNKNOWN"


class BlobUploadUnknown(NotFound):
    """An upload session that does not exist (finished, cancelled, or never made)."""

    code = "BLOB_UPLOAD_UNKNOWN"


class DigestMismatch(DockerConnectError):
    """Bytes that do not match the digest (or size) they were offered under.

    Never remembered as a miss: the source is faulty, the content may exist.
    """

    code = "DIGEST_INVALID"
    status = 400


class SizeInvalid(DigestMismatch):
    """Content whose length differs from the size it was declared with."""

    code = "SIZE_INVALID"


class Unsupported(DockerConnectError):
    """A well-formed request this library cannot honour, e.g. verifying a
    digest whose algorithm it does not implement."""

    code = "UNSUPPORTED"
    status = 400


class ResolverClosed(DockerConnectError, RuntimeError):
    """A ``Resolver`` used outside its ``async with`` block."""


class StorageError(DockerConnectError):
    """A store could not read or write its own storage: a full disk, a denied
    permission, an I/O error. ``__cause__`` is the ``OSError``.

    Nothing was published by the operation that failed. ``retryable``: space
    may be freed or a transient fault may clear.
    """

    retryable = True


class UpstreamError(DockerConnectError):
    """A connector could not be asked: network failure, server error, bad bytes.

    ``failures`` maps each connector's name to the error it raised when a
    request was tried against several of them.
    """

    status = 502
    retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        failures: dict[str, BaseException] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.failures = dict(failures or {})


class Unauthorized(UpstreamError):
    """The upstream refused our credentials (or asked for some we lack)."""

    code = "UNAUTHORIZED"
    status = 401
    retryable = False


class Denied(UpstreamError):
    """The upstream understood who we are and refused access."""

    code = "DENIED"
    status = 403
    retryable = False


class TooManyRequests(UpstreamError):
    """The upstream is rate-limiting us; ``retry_after`` is in seconds, if given."""

    code = "TOOMANYREQUESTS"
    status = 429

    def __init__(
        self, message: str = "", *, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ConnectorCycle(UpstreamError):
    """A chain of ``RegistryConnector``s leads back to a registry already asked."""

    status = 508
    retryable = False


class UpstreamDigestMismatch(UpstreamError, DigestMismatch):
    """A connector sent bytes that do not match their digest.

    Both an upstream failure (the source is faulty; another may be fine, and
    it is never remembered as a miss) and a digest mismatch.
    """

    code = "DIGEST_INVALID"
    status = 502
    retryable = True


class UpstreamTimeout(UpstreamError):
    """An upstream did not answer within its deadline, or sent slower than its
    minimum rate; another source may be fine."""

    status = 504
    retryable = True


class ListingTooLarge(UpstreamError):
    """An upstream's tag or catalog listing passed the bounds on names or bytes
    one listing may take; it was not read further."""

    retryable = False
