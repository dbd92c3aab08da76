"""Fixtures: moto (S3) and redis-server on 127.0.0.1, once per session; see
``backend_servers.py`` for how they run and what is skipped without them."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator

import pytest
from backend_servers import MotoServer, RedisServer, require, unique


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    require(
        "moto (server mode)",
        importlib.util.find_spec("moto") is not None,
        "pip install 'moto[server]'",
    )
    require(
        "aiobotocore",
        importlib.util.find_spec("aiobotocore") is not None,
        "pip install 'dockerconnect[s3]'",
    )
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    require("redis-server", binary is not None, "apt-get install redis-server")
    require(
        "redis-py",
        importlib.util.find_spec("redis") is not None,
        "pip install 'dockerconnect[redis]'",
    )
    assert binary is not None
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary)
    yield server
    server.stop()


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    """A new, empty bucket on the moto server."""
    name = unique("dc")
    moto_server.client().create_bucket(Bucket=name)
    return name
