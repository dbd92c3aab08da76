"""Credentials, ``WWW-Authenticate`` challenges and the bearer-token cache.

The token flow is the one of distribution's "Token Authentication
Specification" (docs/spec/auth/token.md): a registry answers ``401`` with
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``; the client asks
the realm ``GET realm?service=…&scope=…`` (with basic credentials if it has
any) and gets ``{"token": …}`` or ``{"access_token": …}`` with an optional
``expires_in`` ("When omitted, this defaults to 60 seconds").
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import attrs

from dockerconnect.errors import InvalidInput

__all__ = ["Challenge", "Credentials", "TokenCache", "parse_challenges"]

#: "When omitted, this defaults to 60 seconds." (token.md, ``expires_in``)
DEFAULT_TOKEN_LIFETIME = 60.0
#: A token is renewed this long before it expires, so that it does not lapse
#: between being taken from the cache and reaching the registry.
EXPIRY_MARGIN = 5.0
#: Scopes are per repository: keep the cache bounded however many are used.
MAX_CACHED_TOKENS = 512


@attrs.frozen(slots=True)
class Credentials:
    """A user name and password (or access token used as one).

    The password never appears in ``repr`` (nor therefore in logs or
    tracebacks that show the object).
    """

    username: str
    password: str = attrs.field(repr=False)

    @classmethod
    def coerce(cls, value: Credentials | tuple[str, str] | None) -> Credentials | None:
        """``value`` as ``Credentials``: a ``(username, password)`` pair is accepted."""
        if value is None or isinstance(value, Credentials):
            return value
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return cls(value[0], value[1])
        raise InvalidInput("credentials must be Credentials or a (username, password) pair")

    def basic(self) -> str:
        """The value of an ``Authorization: Basic …`` header (RFC 7617)."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@attrs.frozen(slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a scheme and its parameters.

    ``scheme`` is lowercased; parameter names are lowercased, values unquoted.
    """

    scheme: str
    params: dict[str, str] = attrs.field(hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s+|$)")
_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 section 4.1).

    Several challenges may share one header, separated by commas; a token
    followed by white space starts a new challenge. Malformed parts are
    skipped rather than failing the request that carried them.
    """
    out: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            match = _SCHEME.match(value, pos)
            if match is None:
                break
            scheme = match.group(1).lower()
            pos = match.end()
            params: dict[str, str] = {}
            while pos < len(value):
                param = _PARAM.match(value, pos)
                if param is None or param.end() == pos:
                    break
                raw = param.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params[param.group(1).lower()] = raw
                pos = param.end()
            out.append(Challenge(scheme, params))
            # Skip a stray comma between challenges.
            while pos < len(value) and value[pos] in ", ":
                pos += 1
    return out


@attrs.frozen(slots=True)
class _Token:
    value: str = attrs.field(repr=False)
    expires_at: float


class TokenCache:
    """Bearer tokens by scope, each kept until shortly before it expires.

    Owned by one connector instance (no state is shared between instances).
    ``clock`` is monotonic seconds, injectable so expiry can be tested.
    """

    __slots__ = ("_clock", "_tokens")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[str, _Token] = {}

    def get(self, scope: str) -> str | None:
        """The cached token for ``scope``, or ``None`` if absent or expiring."""
        token = self._tokens.get(scope)
        if token is None:
            return None
        if self._clock() >= token.expires_at:
            del self._tokens[scope]
            return None
        return token.value

    def put(self, scope: str, value: str, expires_in: float | None) -> None:
        """Remember ``value`` for ``scope`` for ``expires_in`` seconds (default 60)."""
        lifetime = DEFAULT_TOKEN_LIFETIME if expires_in is None else expires_in
        margin = min(EXPIRY_MARGIN, lifetime / 10)
        now = self._clock()
        if len(self._tokens) >= MAX_CACHED_TOKENS:
            for key in [k for k, t in self._tokens.items() if t.expires_at <= now]:
                del self._tokens[key]
            while len(self._tokens) >= MAX_CACHED_TOKENS:
                del self._tokens[next(iter(self._tokens))]
        self._tokens[scope] = _Token(value, now + lifetime - margin)

    def discard(self, scope: str, value: str | None = None) -> None:
        """Forget the token for ``scope`` (only if it is ``value``, when given)."""
        token = self._tokens.get(scope)
        if token is not None and (value is None or token.value == value):
            del self._tokens[scope]
