"""Image references, ``[registry/]repository[:tag][@digest]``, read as Docker reads them.

The grammar is the one of ``github.com/distribution/reference`` (``reference.go``,
``regexp.go``), restated with ASCII-only character classes::

    reference         := name [ ":" tag ] [ "@" digest ]
    name              := [ domain "/" ] remote-name
    domain            := host [ ":" port-number ]
    host              := domain-name | "[" IPv6address "]"
    domain-name       := domain-component [ "." domain-component ]*
    domain-component  := /[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]/
    port-number       := /[0-9]+/
    remote-name       := path-component [ "/" path-component ]*
    path-component    := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric     := /[a-z0-9]+/
    separator         := /[._]|__|[-]+/
    tag               := /[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}/
    digest            := the OCI image-spec digest (see :class:`~dockerconnect.Digest`)

and the normalisation is the one of ``normalize.go`` (what the Docker CLI calls
turning a "familiar" name into a canonical one):

* the first ``/``-separated component names a registry only if it contains
  ``.`` or ``:``, is ``localhost``, or contains an uppercase letter; otherwise
  the whole name is a path on Docker Hub (``docker.io``). A name without any
  ``/`` is always a Docker Hub path, even ``localhost`` or ``example.com``;
* ``index.docker.io`` (the legacy Docker Hub name) becomes ``docker.io``;
* a one-component Docker Hub path gets the ``library/`` namespace of official
  images;
* a bare 64-digit lowercase hex string is refused: Docker reads it as an image
  ID, never as a repository.

The registry and repository together (``registry/repository``) may be at most
255 characters, the limit the distribution-spec ("Pulling manifests") says
clients impose.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from dockerconnect._digest import Digest
from dockerconnect.errors import DigestInvalid, NameInvalid, TagInvalid

__all__ = ["Reference", "parse_reference", "validate_repository", "validate_tag"]

_DOCKER_HUB: Final = "docker.io"
_LEGACY_DOCKER_HUB: Final = "index.docker.io"
_OFFICIAL_NAMESPACE: Final = "library/"
_LOCALHOST: Final = "localhost"
_NAME_MAX: Final = 255

_ALPHANUMERIC = r"[a-z0-9]+"
# One period, one or two underscores, or any run of dashes. Runs of dashes keep
# hostname-like components such as punycode (``xn--n3h``) valid; three or more
# underscores stay out because Docker never accepted them.
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

# Deliberately a subset of DNS (no underscores, no trailing dot) so that names
# stay compatible with what Docker has always accepted.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
# Compressed or full IPv6 only: zone identifiers (``%eth0``) and embedded IPv4
# forms are excluded, as in the reference grammar.
_IPV6_ADDRESS = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6_ADDRESS})"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
_DOMAIN = rf"{_HOST}{_OPTIONAL_PORT}"

_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}"
_IDENTIFIER = r"[a-f0-9]{64}"

# Always used with ``fullmatch``: ``$`` would also accept a trailing newline.
_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT)
_REMOTE_NAME_RE = re.compile(_REMOTE_NAME)
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_IDENTIFIER_RE = re.compile(_IDENTIFIER)
_UPPERCASE_RE = re.compile(r"[A-Z]")
_PATH_CHARS_RE = re.compile(r"[a-z0-9._-]*")
_TAG_CHARS_RE = re.compile(r"[a-zA-Z0-9_.-]*")


def validate_repository(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise :class:`NameInvalid`.

    This is the ``<name>`` of the registry HTTP API (distribution-spec, "Pulling
    manifests"): ``/``-separated path components matching
    ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*``, at most 255 characters in all. No
    registry and no normalisation: ``nginx`` is valid here and stays ``nginx``.
    The error message says what is wrong.
    """
    if not isinstance(name, str):
        raise NameInvalid(f"repository name must be a string, not {type(name).__name__}")
    problem = _repository_problem(name)
    if problem is not None:
        raise NameInvalid(problem)
    return name


def parse_reference(reference: str) -> Digest | str:
    """A manifest reference as the API takes it: a digest if it contains ``:``, else a tag.

    The digest's algorithm must be verifiable (``Unsupported`` otherwise), so
    a request that could never be checked fails before any I/O.
    """
    if not isinstance(reference, str):
        raise TagInvalid(f"reference must be a string, not {type(reference).__name__}")
    if ":" in reference:
        digest = Digest.parse(reference)
        digest.hasher()
        return digest
    return validate_tag(reference)


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise :class:`TagInvalid`.

    A tag matches ``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`` (distribution-spec,
    "Pulling manifests"): at most 128 characters, not starting with ``.`` or ``-``.
    """
    if not isinstance(tag, str):
        raise TagInvalid(f"tag must be a string, not {type(tag).__name__}")
    problem = _tag_problem(tag)
    if problem is not None:
        raise TagInvalid(problem)
    return tag


@attrs.frozen(slots=True)
class Reference:
    """A reference to an image: registry, repository, and an optional tag and digest.

    Always canonical: ``registry`` is never empty and never ``index.docker.io``,
    a Docker Hub repository always has a namespace (``library/nginx``), and no
    default tag is invented (``nginx`` has ``tag is None``). Construction
    validates, so every instance satisfies ``Reference.parse(str(r)) == r`` and
    ``Reference.parse(r.familiar) == r``. Invalid parts raise
    :class:`NameInvalid`, :class:`TagInvalid` or :class:`DigestInvalid`, all of
    them :class:`~dockerconnect.errors.InvalidInput` and ``ValueError``.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __attrs_post_init__(self) -> None:
        registry: object = self.registry
        if not isinstance(registry, str):
            raise NameInvalid(f"registry must be a string, not {type(registry).__name__}")
        validate_repository(self.repository)
        problem = _registry_problem(registry) or _name_problem(registry, self.repository)
        if problem is not None:
            raise NameInvalid(problem)
        if self.tag is not None:
            validate_tag(self.tag)
        digest: object = self.digest
        if digest is not None and not isinstance(digest, Digest):
            raise DigestInvalid(
                f"digest must be a Digest or None, not {type(digest).__name__} "
                "(use Digest.parse for strings)"
            )

    @classmethod
    def parse(cls, value: str | Reference) -> Reference:
        """Parse a reference the way ``docker pull`` does, normalising it.

        ``nginx`` becomes ``docker.io/library/nginx`` (no tag),
        ``index.docker.io/x/y`` becomes ``docker.io/x/y``, and a name, tag and
        digest may all be given (``name:tag@sha256:…``). Any input either
        parses or raises :class:`NameInvalid` (bad, empty, uppercase or
        too-long name; also for non-string input), :class:`TagInvalid` or
        :class:`DigestInvalid`. A :class:`Reference` is returned as it is.
        """
        if isinstance(value, Reference):
            return value
        if not isinstance(value, str):
            raise NameInvalid(f"reference must be a string, not {type(value).__name__}")
        if _IDENTIFIER_RE.fullmatch(value):
            raise NameInvalid(
                f"invalid reference {value!r}: a 64-character hex string is an image ID, "
                f"not a repository name (write {_DOCKER_HUB}/{_OFFICIAL_NAMESPACE}{value} "
                "to mean the repository)"
            )
        remainder, at, digest_text = value.partition("@")
        name, tag = _split_tag(remainder)
        if not name:
            raise NameInvalid(f"invalid reference {_show(value)}: no repository name")
        registry, repository = _split_docker_domain(name)
        problem = (
            _repository_problem(repository)
            or _registry_problem(registry)
            or _name_problem(registry, repository)
        )
        if problem is not None:
            raise NameInvalid(f"invalid reference {_show(value)}: {problem}")
        problem = None if tag is None else _tag_problem(tag)
        if problem is not None:
            raise TagInvalid(f"invalid reference {_show(value)}: {problem}")
        digest = None
        if at:
            try:
                digest = Digest.parse(digest_text)
            except DigestInvalid as exc:
                raise DigestInvalid(f"invalid reference {_show(value)}: {exc.message}") from exc
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str | None:
        """What to ask a registry's manifest endpoint for: the digest if there
        is one (it pins the content), else the tag, else ``None``."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag

    @property
    def familiar(self) -> str:
        """The short form the Docker CLI shows: ``nginx``, ``user/app:1.0``.

        Drops ``docker.io/`` and the ``library/`` of official images, but only
        where the short form still parses back to this reference: for example
        ``docker.io/foo.bar/baz`` stays whole, since ``foo.bar`` would be read
        as a registry, and ``library/<64 hex>`` keeps its namespace, since a
        bare 64-hex string is an image ID.
        """
        return self._with_suffix(self._familiar_name())

    def _familiar_name(self) -> str:
        if self.registry != _DOCKER_HUB:
            return self.name
        path = self.repository
        short = path.removeprefix(_OFFICIAL_NAMESPACE)
        if short != path and "/" not in short and not _IDENTIFIER_RE.fullmatch(short):
            return short
        if _looks_like_domain(path.partition("/")[0]):
            return self.name
        return path

    def _with_suffix(self, name: str) -> str:
        if self.tag is not None:
            name = f"{name}:{self.tag}"
        if self.digest is not None:
            name = f"{name}@{self.digest}"
        return name

    def __str__(self) -> str:
        return self._with_suffix(self.name)

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"


def _split_docker_domain(name: str) -> tuple[str, str]:
    # normalize.go's splitDockerDomain: decides from the first component's shape
    # alone whether it is a registry; validity is checked afterwards.
    first, slash, rest = name.partition("/")
    if not slash:
        return _DOCKER_HUB, _OFFICIAL_NAMESPACE + name
    if first == _LEGACY_DOCKER_HUB:
        registry, repository = _DOCKER_HUB, rest
    elif _looks_like_domain(first):
        registry, repository = first, rest
    else:
        registry, repository = _DOCKER_HUB, name
    if registry == _DOCKER_HUB and "/" not in repository:
        repository = _OFFICIAL_NAMESPACE + repository
    return registry, repository


def _looks_like_domain(component: str) -> bool:
    # Uppercase counts because repository paths can never hold it, so such a
    # component could only ever have been meant as a host name.
    return (
        "." in component
        or ":" in component
        or component == _LOCALHOST
        or _UPPERCASE_RE.search(component) is not None
    )


def _repository_problem(name: str) -> str | None:
    if _REMOTE_NAME_RE.fullmatch(name) and len(name) <= _NAME_MAX:
        return None
    if not name:
        return "repository name must not be empty"
    if len(name) > _NAME_MAX:
        return f"repository name is {len(name)} characters long, more than {_NAME_MAX}"
    if _UPPERCASE_RE.search(name):
        return f"repository name {_show(name)} must be lowercase"
    for component in name.split("/"):
        problem = _component_problem(component)
        if problem is not None:
            return f"repository name {_show(name)}: {problem}"
    # Unreachable while the checks above mirror _REMOTE_NAME; kept so that a
    # mismatch still surfaces as NameInvalid rather than as some other error.
    return f"invalid repository name {_show(name)}"


def _component_problem(component: str) -> str | None:
    if _PATH_COMPONENT_RE.fullmatch(component):
        return None
    if not component:
        return "empty path component ('/' at either end, or '//')"
    if not _PATH_CHARS_RE.fullmatch(component):
        bad = next(c for c in component if not _PATH_CHARS_RE.fullmatch(c))
        return (
            f"path component {_show(component)} contains {bad!r}; only a-z, 0-9, "
            "'.', '_' and '-' are allowed"
        )
    if not component[0].isalnum():
        return f"path component {_show(component)} must start with a letter or digit"
    if not component[-1].isalnum():
        return f"path component {_show(component)} must end with a letter or digit"
    return (
        f"path component {_show(component)} has a bad separator: letters and digits "
        "may be joined by one '.', one or two '_', or any number of '-'"
    )


def _registry_problem(registry: str) -> str | None:
    if not _DOMAIN_RE.fullmatch(registry):
        return (
            f"invalid registry {_show(registry)}: expected a host name, IPv4 address "
            "or [IPv6] address, optionally with :port"
        )
    if registry == _LEGACY_DOCKER_HUB:
        return f"registry {_LEGACY_DOCKER_HUB!r} must be written {_DOCKER_HUB!r}"
    if not _looks_like_domain(registry):
        return (
            f"registry {registry!r} would be read back as part of a Docker Hub repository "
            f"name; a registry needs a '.' or ':', or must be {_LOCALHOST!r}"
        )
    return None


def _name_problem(registry: str, repository: str) -> str | None:
    if registry == _DOCKER_HUB and "/" not in repository:
        return (
            f"Docker Hub repository {repository!r} must have a namespace "
            f"(official images are {_OFFICIAL_NAMESPACE}{repository})"
        )
    length = len(registry) + 1 + len(repository)
    if length > _NAME_MAX:
        return (
            f"name {_show(registry + '/' + repository)} is {length} characters long, "
            f"more than {_NAME_MAX}"
        )
    return None


def _tag_problem(tag: str) -> str | None:
    if _TAG_RE.fullmatch(tag):
        return None
    if not tag:
        return "tag must not be empty"
    if len(tag) > 128:
        return f"tag is {len(tag)} characters long, more than 128"
    if not _TAG_CHARS_RE.fullmatch(tag):
        bad = next(c for c in tag if not _TAG_CHARS_RE.fullmatch(c))
        return (
            f"tag {_show(tag)} contains {bad!r}; only letters, digits, '_', '.' and '-' are allowed"
        )
    return f"tag {_show(tag)} must not start with '.' or '-'"


def _show(text: str, limit: int = 80) -> str:
    # Inputs can be arbitrarily long; an error message should stay readable.
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"… ({len(text)} characters)"


def _split_tag(remainder: str) -> tuple[str, str | None]:
    """``name[:tag]`` split in two. A tag can hold neither ":" nor "/", so a
    ":" before the last "/" belongs to the registry's port or IPv6 address."""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        return remainder[:colon], remainder[colon + 1 :]
    return remainder, None
