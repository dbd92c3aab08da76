"""What every shipped store shares: argument checks and the ``ingest`` wrapper.

The memory and filesystem stores check their arguments with the same rules
and raise the same errors, so both pass the same conformance suites; those
rules live here once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

from dockerconnect._digest import Digest, DigestVerifier
from dockerconnect._protocols import BlobWriter
from dockerconnect.errors import BlobUploadInvalid, InvalidInput, RangeInvalid

__all__ = [
    "check_offset",
    "check_size",
    "check_source",
    "check_time",
    "check_writable",
    "ingest",
]


class ClosingWriter(BlobWriter, Protocol):
    """A store's writer: a :class:`BlobWriter` that can discard what it holds."""

    async def close(self) -> None:
        """Discard whatever was not committed; idempotent."""
        ...


W = TypeVar("W", bound=ClosingWriter)


def ingest(
    digest: Digest,
    size: int | None,
    make_writer: Callable[[DigestVerifier], W],
    *,
    busy: Counter[Digest] | None = None,
) -> AbstractAsyncContextManager[BlobWriter]:
    """The body of every store's ``ingest``: check, then yield a writer that is
    always closed.

    ``digest`` and ``size`` are checked here, at the call, rather than inside
    the context manager, so bad input fails where it is passed and not at
    ``async with``. Leaving the block in any way (commit, exception,
    cancellation) closes the writer, which discards anything not committed.
    ``busy`` counts the ingests of each digest in progress while the block
    runs (what a store's ``remove_cached`` refuses to race).
    """
    verifier = DigestVerifier(Digest.parse(digest), check_size(size))
    return _closing(make_writer(verifier), verifier.digest, busy)


@asynccontextmanager
async def _closing(
    writer: ClosingWriter, digest: Digest, busy: Counter[Digest] | None
) -> AsyncIterator[BlobWriter]:
    if busy is not None:
        busy[digest] += 1
    try:
        yield writer
    finally:
        try:
            await writer.close()
        finally:
            if busy is not None:
                busy[digest] -= 1
                if not busy[digest]:
                    del busy[digest]


def check_offset(offset: int, size: int | None, digest: Digest) -> None:
    """Raise :class:`~dockerconnect.errors.RangeInvalid` unless ``0 <= offset <= size``.

    With ``size=None`` (not known yet) only the type and sign are checked.
    """
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise RangeInvalid(f"offset must be an integer, not {type(offset).__name__}")
    if offset < 0 or (size is not None and offset > size):
        raise RangeInvalid(
            f"offset {offset} is outside the blob's {size} bytes", digest=str(digest)
        )


def check_size(size: int | None) -> int | None:
    """``size`` if it is ``None`` or a non-negative integer, else ``InvalidInput``."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"blob size must be a non-negative integer or None, not {size!r}")
    return size


def check_writable(state: str, digest: Digest) -> None:
    """Raise ``BlobUploadInvalid`` unless a writer in ``state`` takes writes."""
    if state != "open":
        raise BlobUploadInvalid(
            f"the blob writer is {state}; start a new ingest", digest=str(digest)
        )


def check_time(at: float, *, bound: bool = False) -> float:
    """``at`` as a float if it is a finite number of seconds, else ``InvalidInput``.

    A ``bound`` (such as ``unused_since``) may also be ``math.inf``: "whenever".
    """
    ok = not isinstance(at, bool) and isinstance(at, (int, float))
    if not ok or not (math.isfinite(at) or (bound and at == math.inf)):
        raise InvalidInput(f"a time must be a finite number of seconds, not {at!r}")
    return float(at)


def check_source(source: str) -> str:
    """A connector name to record as a cached blob's origin, else ``InvalidInput``."""
    if not isinstance(source, str) or not source:
        raise InvalidInput(f"a cached blob's source must be a connector name, not {source!r}")
    return source
