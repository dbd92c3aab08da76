"""What every route module is handed: the registry and the server's settings."""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from dockerconnect import Digest, Registry
from dockerconnect.asgi._uploads import UploadSessions

__all__ = ["MAX_MANIFEST_SIZE", "Context"]

#: The largest manifest a PUT may carry (distribution-spec "Pushing
#: Manifests": registries SHOULD accept at least 4 MiB; this one accepts that).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@attrs.define
class Context:
    registry: Registry
    uploads: UploadSessions
    blob_path: Callable[[Digest], str | os.PathLike[str]] | None = None
    max_manifest_size: int = MAX_MANIFEST_SIZE
