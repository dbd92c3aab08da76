"""Fixtures for the sharing tests: moto (S3) and redis-server on 127.0.0.1 once per
session, from ``tests/backends/backend_servers.py`` (skipped without them, failed
under ``CI=true``)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))

from backend_servers import MotoServer, RedisServer, require

from dockerconnect.testing import DistributionRegistry


@pytest.fixture
def upstream() -> Iterator[DistributionRegistry]:
    """A real ``docker-registry`` on 127.0.0.1 with its access log on."""
    require(
        "docker-registry (CNCF distribution)",
        DistributionRegistry.available(),
        "apt-get install docker-registry",
    )
    with DistributionRegistry() as registry:
        yield registry


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    for module, how in (("moto", "pip install 'moto[server]'"), ("aiobotocore", "[s3] extra")):
        require(module, importlib.util.find_spec(module) is not None, how)
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    require("redis-server", binary is not None, "apt-get install redis-server")
    require("redis-py", importlib.util.find_spec("redis") is not None, "[redis] extra")
    assert binary is not None
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary)
    yield server
    server.stop()
