"""Real registries for the end-to-end tests: CNCF distribution, started here.

Without ``docker-registry`` or ``skopeo`` the end-to-end tests fail loudly
under CI (``CI=true``) and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator

import pytest
from _token_server import TokenServer

from dockerconnect.testing import DistributionRegistry, TokenAuthConfig

USERS = {"alice": "wonderland"}


def _require_tools() -> None:
    missing = [
        name
        for name, found in (
            ("docker-registry", DistributionRegistry.available()),
            ("skopeo", shutil.which("skopeo") is not None),
        )
        if not found
    ]
    if not missing:
        return
    message = (
        f"END-TO-END TESTS NEED {' AND '.join(missing)}: apt-get install docker-registry skopeo"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def registry() -> Iterator[DistributionRegistry]:
    """An open registry (no auth)."""
    _require_tools()
    with DistributionRegistry() as running:
        yield running


@pytest.fixture(scope="session")
def basic_registry() -> Iterator[DistributionRegistry]:
    """A registry behind htpasswd basic auth (user ``alice``)."""
    _require_tools()
    with DistributionRegistry(users=USERS) as running:
        yield running


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token"), USERS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(token_server: TokenServer) -> Iterator[DistributionRegistry]:
    """A registry behind distribution's token auth, trusting ``token_server``."""
    _require_tools()
    config = TokenAuthConfig(
        realm=token_server.realm,
        service=token_server.service,
        issuer=token_server.issuer,
        rootcertbundle=token_server.rootcertbundle,
    )
    with DistributionRegistry(token=config) as running:
        yield running


class _CountingHash:
    """A hash object that counts the bytes it is fed."""

    def __init__(self, inner: hashlib._Hash, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    def update(self, data: bytes) -> None:
        self._counter[0] += len(data)
        self._inner.update(data)

    def copy(self) -> hashlib._Hash:
        return self._inner.copy()

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bytes every hash object of the library was fed."""
    counter = [0]
    real = hashlib.new

    def counting(name: str, data: bytes = b"", **kwargs: object) -> hashlib._Hash:
        counter[0] += len(data)
        return _CountingHash(real(name, data, **kwargs), counter)  # type: ignore[arg-type,return-value]

    monkeypatch.setattr(hashlib, "new", counting)
    return counter
