"""What every route module is handed: the registry and the server's settings."""

from __future__ import annotations

import inspect
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
    #: Whether the registry's ``open_blob`` takes ``length=`` (the Resolver's
    #: does: a range of a cold blob is then served only once verified whole).
    open_takes_length: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.open_takes_length = _takes(self.registry.open_blob, "length")


def _takes(function: Callable[..., object], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: ask nothing of it
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
