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
import logging
import re
from collections.abc import Awaitable, Callable

import anyio
import attrs
import httpx

from dockerconnect._json import load_json
from dockerconnect.errors import InvalidInput
from dockerconnect.http._errors import Failures, loggable

__all__ = ["Authenticator", "Challenge", "Credentials", "TokenCache", "parse_challenges"]

logger = logging.getLogger("dockerconnect.http")

#: ``fetch(url, authorization)``: the body of a successful ``GET url``, or a
#: typed error. The client supplies it (it owns sending and error translation).
TokenFetch = Callable[[httpx.URL, "str | None"], Awaitable[bytes]]

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


class Authenticator:
    """What to send as ``Authorization`` for a scope, learnt from challenges.

    Starts anonymous. A ``401`` with a ``Bearer`` challenge makes every later
    request carry a token for its scope, fetched from the realm once per
    scope (concurrent requests wait for the one fetch) and cached until it
    expires; a ``Basic`` challenge makes it send the credentials. Credentials
    go to a token realm only over TLS or on the registry's own host.
    """

    def __init__(
        self,
        failures: Failures,
        credentials: Credentials | None,
        home: str,
        clock: Callable[[], float],
        fetch: TokenFetch,
    ) -> None:
        self._failures = failures
        self._credentials = credentials
        self._home = home
        self._fetch = fetch
        self._tokens = TokenCache(clock)
        self._locks: dict[str, anyio.Lock] = {}
        # What the registry asked for the last time it challenged us: once we
        # know, new scopes get their token before the first request, saving a
        # round trip per repository.
        self._bearer: Challenge | None = None
        self._basic = False

    async def authorization(self, scope: str) -> str | None:
        """The ``Authorization`` value for a request in ``scope``, or ``None``."""
        if self._bearer is not None:
            token = self._tokens.get(scope)
            if token is None:
                token = await self._token(self._bearer, scope, scope, stale=None)
            return f"Bearer {token}"
        if self._basic and self._credentials is not None:
            return self._credentials.basic()
        return None

    async def on_challenge(self, response: httpx.Response, scope: str, sent: str | None) -> bool:
        """Learn from a 401 how to authenticate; whether trying again can help."""
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                self._bearer = challenge
                stale = sent[len("Bearer ") :] if sent and sent.startswith("Bearer ") else None
                asked = challenge.params.get("scope") or scope
                await self._token(challenge, scope, asked, stale=stale, force=True)
                return True
        for challenge in challenges:
            if challenge.scheme == "basic" and self._credentials is not None:
                if sent is not None and sent.startswith("Basic "):
                    return False  # the credentials themselves were refused
                self._basic = True
                return True
        return False

    async def _token(
        self, challenge: Challenge, key: str, scope: str, *, stale: str | None, force: bool = False
    ) -> str:
        """Ask the realm for a token for ``scope``; cache it under ``key``.

        One fetch per scope at a time: concurrent requests wait for it and
        share its result rather than each asking the token server.
        """
        async with self._locks.setdefault(key, anyio.Lock()):
            cached = self._tokens.get(key)
            # Another task may have refreshed the token while we waited.
            if cached is not None and (not force or cached != stale):
                return cached
            target = self._realm(challenge, scope)
            authorization = None
            if self._credentials is not None and self._may_send_credentials(target):
                authorization = self._credentials.basic()
            token, expires_in = self._parse(await self._fetch(target, authorization))
            self._tokens.put(key, token, expires_in)
            logger.debug(
                "%s: got a token for scope %s from %s",
                self._failures.connector,
                scope,
                loggable(target),
            )
            return token

    def _realm(self, challenge: Challenge, scope: str) -> httpx.URL:
        realm = challenge.realm or ""
        params: dict[str, str] = {}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        if scope:
            params["scope"] = scope
        # A realm httpx cannot parse raises InvalidURL, which the client (the
        # one place httpx exceptions are caught) turns into an UpstreamError.
        target = httpx.URL(realm)
        if target.scheme not in ("http", "https") or not target.host:
            raise self._failures.error(f"token realm {loggable(realm)!r} is not an http(s) URL")
        return target.copy_merge_params(params)

    def _parse(self, raw: bytes) -> tuple[str, float | None]:
        try:
            doc = load_json(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise self._failures.error("token server answered something other than JSON")
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._failures.error("token server answered without a token")
        if not (token.isascii() and token.isprintable()):
            # RFC 6750 b64token: it must fit in an Authorization header as is.
            raise self._failures.error("token server answered a token that is not printable ASCII")
        expires_in = doc.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
            return token, None
        if not expires_in > 0:
            return token, None
        return token, float(expires_in)

    def _may_send_credentials(self, target: httpx.URL) -> bool:
        # Basic credentials are sent to a token realm only over TLS, or to the
        # registry's own host (a plain-http registry for local development):
        # never in clear text to a third host.
        return target.scheme == "https" or target.host == self._home
