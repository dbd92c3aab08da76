"""Content digests and the one verifier every path uses."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import anyio.to_thread
import attrs

from dockerconnect.errors import DigestInvalid, DigestMismatch, SizeInvalid, Unsupported

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Digest", "DigestVerifier", "as_digest"]

# OCI image-spec, descriptor.md "Digests":
#   digest                ::= algorithm ":" encoded
#   algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
#   algorithm-component   ::= [a-z0-9]+
#   algorithm-separator   ::= [+._-]
#   encoded               ::= [a-zA-Z0-9=_-]+
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+")
_VERIFIED: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")

#: Chunks at least this large are hashed in a worker thread (hashlib releases
#: the GIL for large buffers); smaller ones are cheaper to hash inline.
THREAD_HASH_THRESHOLD = 256 * 1024


@attrs.frozen(slots=True, order=True)
class Digest:
    """A content digest such as ``sha256:…``.

    ``sha256`` and ``sha512`` digests are checked to be lowercase hex of the
    exact length; other well-formed algorithms parse but cannot be verified
    (:class:`~dockerconnect.errors.Unsupported` from :meth:`hasher`). The
    string form never contains ``/``, ``..`` or white space, so it is safe as
    a file name.
    """

    algorithm: str
    hex: str

    def __attrs_post_init__(self) -> None:
        _check(self.algorithm, self.hex)

    @classmethod
    def parse(cls, value: str | Digest) -> Digest:
        """Parse ``algorithm:encoded``; raises :class:`DigestInvalid`."""
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise DigestInvalid(f"digest must be a string, not {type(value).__name__}")
        algorithm, sep, encoded = value.partition(":")
        if not sep:
            raise DigestInvalid(f"invalid digest {value!r}: expected 'algorithm:encoded'")
        return cls(algorithm, encoded)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        if algorithm not in _VERIFIED:
            raise Unsupported(f"cannot compute digests with algorithm {algorithm!r}")
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @property
    def verifiable(self) -> bool:
        """Whether this library can compute digests of this algorithm."""
        return self.algorithm in _VERIFIED

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object for this digest's algorithm."""
        if not self.verifiable:
            raise Unsupported(
                f"digest algorithm {self.algorithm!r} cannot be verified "
                f"(supported: {', '.join(sorted(_VERIFIED))})",
                digest=str(self),
            )
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` hashes to this digest."""
        h = self.hasher()
        h.update(data)
        return h.hexdigest() == self.hex

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"


def _check(algorithm: object, encoded: object) -> None:
    if not isinstance(algorithm, str) or not isinstance(encoded, str):
        raise DigestInvalid("digest algorithm and encoded part must be strings")
    if not _ALGORITHM.fullmatch(algorithm):
        raise DigestInvalid(f"invalid digest algorithm {algorithm!r}")
    if not _ENCODED.fullmatch(encoded):
        raise DigestInvalid(f"invalid encoded digest {encoded!r} for {algorithm}")
    length = _VERIFIED.get(algorithm)
    if length is not None and (len(encoded) != length or not _HEX.fullmatch(encoded)):
        raise DigestInvalid(
            f"invalid {algorithm} digest {algorithm}:{encoded}: "
            f"expected {length} lowercase hex characters"
        )


class DigestVerifier:
    """Feed chunks, then check digest and size at the end.

    The single place where bytes are checked against what they claim to be:
    every store, connector and resolver path uses it. ``size`` is the expected
    total, or ``None`` to accept any length. Exceeding the expected size fails
    as soon as it happens, so a runaway source is cut off early.
    """

    __slots__ = ("_hash", "count", "digest", "size")

    def __init__(self, digest: Digest | str, size: int | None = None) -> None:
        self.digest = Digest.parse(digest)
        self.size = size
        self._hash = self.digest.hasher()
        self.count = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash ``chunk`` inline."""
        self._account(len(chunk))
        self._hash.update(chunk)

    async def aupdate(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash ``chunk``, in a worker thread when it is large enough to pay off."""
        self._account(len(chunk))
        if len(chunk) >= THREAD_HASH_THRESHOLD:
            await anyio.to_thread.run_sync(self._hash.update, chunk)
        else:
            self._hash.update(chunk)

    def _account(self, n: int) -> None:
        self.count += n
        if self.size is not None and self.count > self.size:
            raise SizeInvalid(
                f"content is longer than its declared size {self.size}",
                digest=str(self.digest),
            )

    @property
    def ok(self) -> bool:
        """Whether what was fed so far is exactly the expected content."""
        if self.size is not None and self.count != self.size:
            return False
        return self._hash.copy().hexdigest() == self.digest.hex

    def verify(self) -> None:
        """Raise unless the bytes fed are exactly the expected content.

        :class:`SizeInvalid` for a wrong length, :class:`DigestMismatch` for
        wrong bytes.
        """
        if self.size is not None and self.count != self.size:
            raise SizeInvalid(
                f"content is {self.count} bytes, expected {self.size}", digest=str(self.digest)
            )
        actual = self._hash.copy().hexdigest()
        if actual != self.digest.hex:
            raise DigestMismatch(
                f"content hashes to {self.digest.algorithm}:{actual}, expected {self.digest}",
                digest=str(self.digest),
            )

    def copy(self) -> Self:
        """An independent verifier in the same state (for resuming)."""
        other = object.__new__(type(self))
        other.digest = self.digest
        other.size = self.size
        other._hash = self._hash.copy()
        other.count = self.count
        return other


def as_digest(value: Digest | str) -> Digest:
    """``value`` as a :class:`Digest` (an attrs converter; raises ``DigestInvalid``)."""
    return Digest.parse(value)
