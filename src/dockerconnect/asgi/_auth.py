"""Access control: who is asking (an authenticator), and may they (an authorizer).

An :class:`Authenticator` turns a request's ``Authorization`` header into
an :class:`Identity` (``None``: anonymous; ``AuthenticationRequired`` for
credentials that are not valid) and writes the ``WWW-Authenticate``
challenge. An :class:`Authorizer` answers whether an identity may do an
action (``pull``, ``push``, ``delete``, ``admin``) to a repository. Two
authenticators ship:

- :class:`HtpasswdAuthenticator`: HTTP Basic against an htpasswd file of
  bcrypt hashes (``htpasswd -B``), as distribution's ``htpasswd`` auth;
- :class:`TokenAuthenticator`: bearer tokens per the distribution token
  authentication spec: the challenge names the token server (``realm``),
  the ``service`` and the ``scope`` needed; a token is a JWT whose
  signature is checked against a configured public key or JWKS file, whose
  ``iss``/``aud``/``exp``/``nbf`` are checked, and whose ``access`` claim
  lists what it grants.

:class:`RuleAuthorizer` applies per-repository :class:`Rule`\\ s (first match
wins; the default allows anonymous pull and authenticated push and delete,
and administration to nobody).
For a token, the token's grants must allow the action too. A refused
anonymous request is 401 with the challenge (so the client logs in); a
refused known client is 403 ``DENIED``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from base64 import b64decode
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import anyio.to_thread
import attrs
from cachetools import TTLCache

from dockerconnect.asgi._errors import AuthenticationRequired

__all__ = [
    "Action",
    "Authenticator",
    "Authorizer",
    "HtpasswdAuthenticator",
    "Identity",
    "Rule",
    "RuleAuthorizer",
    "TokenAuthenticator",
    "Who",
]

Action = Literal["pull", "push", "delete", "admin"]
#: Who a rule lets do an action: ``"anyone"``, ``"authenticated"``,
#: ``"nobody"``, or a tuple of identity names.
Who = str | tuple[str, ...]
_WHO = ("anyone", "authenticated", "nobody")


@attrs.frozen
class Identity:
    """An authenticated client. ``grants`` holds the ``(repository, action)``
    pairs a token allows, or None when the identity is not limited by one."""

    name: str
    grants: frozenset[tuple[str, str]] | None = None

    def granted(self, repository: str, action: Action) -> bool:
        if self.grants is None:
            return True
        return (repository, action) in self.grants or (repository, "*") in self.grants


@runtime_checkable
class Authenticator(Protocol):
    """Who sent a request. ``None`` is anonymous (no credentials sent)."""

    async def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity of ``authorization`` (the header's value), or None.

        Raises ``AuthenticationRequired`` for credentials that are not valid.
        """
        ...

    def challenge(self, repository: str, actions: Sequence[Action]) -> str:
        """The ``WWW-Authenticate`` value for a request that needs ``actions``."""
        ...


@runtime_checkable
class Authorizer(Protocol):
    """Whether ``identity`` (None: anonymous) may do ``action`` to ``repository``."""

    async def authorize(
        self, identity: Identity | None, repository: str, action: Action
    ) -> bool: ...


def _check_who(value: object, where: str) -> Who:
    if isinstance(value, str) and value in _WHO:
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{where} must be one of {', '.join(_WHO)} or a list of names, not {value!r}")


@attrs.frozen
class Rule:
    """Who may pull, push, delete and administer repositories matching
    ``repository`` (an ``fnmatch`` pattern; ``*`` also matches ``/``)."""

    repository: str = "*"
    pull: Who = "anyone"
    push: Who = "authenticated"
    delete: Who = "authenticated"
    #: The ``/_dockerconnect/`` endpoints (checked against repository ``*``):
    #: nobody unless a rule names who.
    admin: Who = "nobody"

    def __attrs_post_init__(self) -> None:
        for action in ("pull", "push", "delete", "admin"):
            _check_who(getattr(self, action), action)

    def allows(self, identity: Identity | None, action: Action) -> bool:
        who: Who = getattr(self, action)
        if who == "anyone":
            return True
        if who == "nobody" or identity is None:
            return False
        if who == "authenticated":
            return True
        return identity.name in who


class RuleAuthorizer:
    """The first :class:`Rule` whose pattern matches the repository decides."""

    def __init__(self, rules: Sequence[Rule] = (), *, default: Rule | None = None) -> None:
        self.rules = tuple(rules)
        self.default = default if default is not None else Rule()

    def rule_for(self, repository: str) -> Rule:
        for rule in self.rules:
            if fnmatch.fnmatchcase(repository, rule.repository):
                return rule
        return self.default

    async def authorize(self, identity: Identity | None, repository: str, action: Action) -> bool:
        if identity is not None and not identity.granted(repository, action):
            return False
        # An anonymous token (no subject) is anonymous to the rules.
        known = identity if identity is not None and identity.name else None
        return self.rule_for(repository).allows(known, action)


# -- htpasswd ------------------------------------------------------------------


class HtpasswdAuthenticator:
    """HTTP Basic auth against an htpasswd file with bcrypt hashes.

    Checking a bcrypt hash takes a fair fraction of a second by design, and
    clients send their credentials with every request, so a credential that
    checked out is remembered (by a hash of the header) for ``cache_ttl``
    seconds. The file is read when this is made.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        realm: str = "dockerconnect",
        cache_ttl: float = 300.0,
    ) -> None:
        self.path = Path(path)
        self.realm = realm
        self.users = self._load(self.path)
        self._verified: TTLCache[bytes, Identity] = TTLCache(maxsize=1024, ttl=cache_ttl)

    @staticmethod
    def _load(path: Path) -> dict[str, bytes]:
        users: dict[str, bytes] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user or not hashed.startswith(("$2y$", "$2a$", "$2b$")):
                raise ValueError(
                    f"{path}:{number}: expected 'user:<bcrypt hash>' (make it with htpasswd -B)"
                )
            users[user] = hashed.encode()
        return users

    async def authenticate(self, authorization: str | None) -> Identity | None:
        if authorization is None:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationRequired("this registry takes Basic credentials")
        key = hashlib.sha256(value.strip().encode("latin-1")).digest()
        known = self._verified.get(key)
        if known is not None:
            return known
        try:
            user, sep, password = b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthenticationRequired("malformed Basic credentials") from None
        if not user and not password:
            # containers/image (skopeo, podman) answers a Basic challenge
            # without credentials with "Basic Og==" (":"): that is anonymous.
            return None
        hashed = self.users.get(user)
        if (
            not sep
            or hashed is None
            or not await anyio.to_thread.run_sync(_bcrypt_check, password.encode(), hashed)
        ):
            raise AuthenticationRequired("wrong user name or password")
        identity = Identity(user)
        self._verified[key] = identity
        return identity

    def challenge(self, repository: str, actions: Sequence[Action]) -> str:
        return f'Basic realm="{self.realm}"'


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


# -- bearer tokens ---------------------------------------------------------------


def _public_key(path: Path) -> Any:
    """A PEM public key, or the key of a PEM certificate (a token server's
    ``rootcertbundle`` works as it is)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from cryptography.x509 import load_pem_x509_certificate

    data = path.read_bytes()
    if b"BEGIN CERTIFICATE" in data:
        return load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


class TokenAuthenticator:
    """Bearer JWTs per the distribution token authentication spec.

    ``public_key`` is a PEM file (an RSA, EC or Ed25519 public key, or a
    certificate holding one) or ``jwks`` a JWKS JSON
    file (the key is picked by the token's ``kid``). ``issuer`` and
    ``service`` must match the token's ``iss`` and ``aud``.
    """

    def __init__(
        self,
        *,
        realm: str,
        service: str,
        issuer: str,
        public_key: str | os.PathLike[str] | None = None,
        jwks: str | os.PathLike[str] | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA", "PS256", "RS512", "ES384"),
        leeway: float = 30.0,
    ) -> None:
        import jwt

        if (public_key is None) == (jwks is None):
            raise ValueError("a token authenticator needs exactly one of public_key or jwks")
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self._key: Any = None
        self._jwks: Any = None
        if public_key is not None:
            self._key = _public_key(Path(public_key))
        else:
            assert jwks is not None
            self._jwks = jwt.PyJWKSet.from_dict(json.loads(Path(jwks).read_text()))

    def _key_for(self, token: str) -> Any:
        import jwt

        if self._key is not None:
            return self._key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AuthenticationRequired(f"the token's key {kid!r} is not in the JWKS")

    async def authenticate(self, authorization: str | None) -> Identity | None:
        import jwt

        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationRequired("this registry takes bearer tokens")
        try:
            claims = jwt.decode(
                token.strip(),
                self._key_for(token.strip()),
                algorithms=self.algorithms,
                audience=self.service,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationRequired(f"the bearer token is not valid here: {exc}") from None
        grants: set[tuple[str, str]] = set()
        for entry in claims.get("access") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            kind, name = entry.get("type"), entry["name"]
            actions = [a for a in entry.get("actions") or [] if isinstance(a, str)]
            if kind == "registry" and name == "catalog":
                name = "_catalog"
                actions = ["pull" if a == "*" else a for a in actions]
            elif kind != "repository":
                continue
            grants.update((name, a) for a in actions)
        subject = claims.get("sub")
        return Identity(subject if isinstance(subject, str) and subject else "", frozenset(grants))

    def challenge(self, repository: str, actions: Sequence[Action]) -> str:
        base = f'Bearer realm="{self.realm}",service="{self.service}"'
        if not repository:
            return base  # /v2/ itself: no scope, as distribution answers
        if repository == "_catalog":
            scope = "registry:catalog:*"
        else:
            scope = f"repository:{repository}:{','.join(actions)}"
        return f'{base},scope="{scope}"'
