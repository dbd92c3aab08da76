"""Content digests: ``algorithm:encoded`` values, parsed and checked.

Hashing lives in :mod:`dockerconnect._verify`; :class:`DigestVerifier` is
re-exported from there so ``from dockerconnect._digest import DigestVerifier``
keeps working.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from dockerconnect._verify import VERIFIED_ALGORITHMS, DigestVerifier, hashes_to, new_hash
from dockerconnect.errors import DigestInvalid, Unsupported

__all__ = ["Digest", "DigestVerifier", "as_digest"]

# OCI image-spec, descriptor.md "Digests":
#   digest                ::= algorithm ":" encoded
#   algorithm             ::= algorithm-component (algorithm-separator algorithm-component)*
#   algorithm-component   ::= [a-z0-9]+
#   algorithm-separator   ::= [+._-]
#   encoded               ::= [a-zA-Z0-9=_-]+
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+")
_VERIFIED = VERIFIED_ALGORITHMS
_HEX = re.compile(r"[a-f0-9]+")


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
        hasher = new_hash(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    @property
    def verifiable(self) -> bool:
        """Whether this library can compute digests of this algorithm."""
        return self.algorithm in _VERIFIED

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object for this digest's algorithm."""
        return new_hash(self.algorithm, digest=str(self))

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` hashes to this digest."""
        return hashes_to(data, self)

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


def as_digest(value: Digest | str) -> Digest:
    """``value`` as a :class:`Digest` (an attrs converter; raises ``DigestInvalid``)."""
    return Digest.parse(value)
