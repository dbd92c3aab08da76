"""``[store.s3]`` and ``[store.redis]`` in the serve configuration: one line per mistake,
and the Resolver they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockerconnect import FilesystemBlobStore
from dockerconnect._cli import build_resolver, parse_serve
from dockerconnect._cli._config import ConfigError

pytest.importorskip("aiobotocore")
pytest.importorskip("redis")

CASES = [
    (
        "[store.s3]\nprefix = 'x/'",
        "store.s3.bucket: missing (the bucket blobs are kept in; it must exist)",
    ),
    (
        "[store.s3]\nbucket = 'b'\nsecret_access_key = 'x'",
        "store.s3.secret_access_key: keys are not written in the config; use "
        "secret_access_key_env (an environment variable) or botocore's usual chain "
        "(AWS_* variables, roles)",
    ),
    (
        "[store.s3]\nbucket = 'b'\naddressing_style = 'dns'",
        "store.s3.addressing_style: must be auto, path or virtual, not 'dns'",
    ),
    (
        "[store.s3]\nbucket = 'b'\npart_size = 1024",
        "store.s3.part_size: must be between 5242880 and 5368709120, not 1024",
    ),
    (
        "[store.s3]\nbucket = 'b'\naccess_key_id_env = 'K'",
        "store.s3: give both access_key_id_env and secret_access_key_env, or neither",
    ),
    (
        "[store.s3]\nbucket = 'b'\nendpoint_url_env = 'NOPE'",
        "store.s3.endpoint_url_env: the environment variable NOPE is not set",
    ),
    (
        "[store.redis]\nurl = 'redis://:pw@host:6379/0'",
        "store.redis.url: passwords are not written in the config; use url_env",
    ),
    (
        "[store.redis]\nprefix = 'p:'",
        "store.redis: give url (redis://host:6379/0) or url_env (an environment variable "
        "holding it, for a URL with a password), not both or neither",
    ),
    (
        "[store.redis]\nurl = 'redis://h:6379/0'\nlease_ttl = 0",
        "store.redis.lease_ttl: must be a positive number of seconds",
    ),
    (
        "[store.redis]\nurl = 'redis://h:6379/0'\nttl = 3",
        "store.redis.ttl: unknown key (known here: url, url_env, prefix, lease_ttl)",
    ),
]


@pytest.mark.parametrize(("toml", "message"), CASES)
def test_each_mistake_is_one_line_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        parse_serve(["--config", str(file)], environ={"K": "key"})
    assert str(caught.value) == message


def test_s3_and_redis_make_the_resolver_share_them(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        "[store.s3]\nbucket = 'b'\nendpoint_url_env = 'E'\naddressing_style = 'path'\n"
        "[store.redis]\nurl_env = 'R'\nprefix = 'p:'\nlease_ttl = 5\n"
    )
    env = {"E": "http://127.0.0.1:1", "R": "redis://127.0.0.1:1/0"}
    config = parse_serve(["--config", str(file), "--workers", "3"], environ=env)
    assert config.workers == 3  # no --store needed: everything is shared
    resolver = build_resolver(config)
    from dockerconnect.redis import RedisFetchCoordinator, RedisManifestStore
    from dockerconnect.s3 import S3BlobStore

    assert isinstance(resolver.blobs, S3BlobStore)
    assert isinstance(resolver.manifests, RedisManifestStore)
    assert resolver.manifests.prefix == "p:"
    assert isinstance(resolver.coordinator, RedisFetchCoordinator)
    assert resolver.coordinator.lease_ttl == 5.0
    assert resolver.coordinator.prefix == "p:"


def test_workers_still_need_a_shared_store(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[store.s3]\nbucket = 'b'\n")
    with pytest.raises(ConfigError, match="several workers need --store"):
        parse_serve(["--config", str(file), "--workers", "2"], environ={})


def test_a_filesystem_store_shares_fetches_without_settings(tmp_path: Path) -> None:
    config = parse_serve(["--store", str(tmp_path), "--workers", "2"], environ={})
    resolver = build_resolver(config)
    assert isinstance(resolver.blobs, FilesystemBlobStore)
    assert resolver.coordinator is None
    assert type(resolver._blobs.gate).__name__ == "FilesystemGate"


def test_retention_over_s3_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """S3 blobs record no use, so retention cannot prune them: say so in one line."""
    file = tmp_path / "c.toml"
    file.write_text(
        "[store.s3]\nbucket = 'b'\nendpoint_url = 'http://127.0.0.1:1'\n"
        "[retention]\nmax_bytes = 1000000\n"
    )
    config = parse_serve(["--config", str(file)], environ={})
    with pytest.raises(ConfigError) as caught:
        build_resolver(config)
    message = str(caught.value)
    assert message.startswith("retention: ")
    assert "\n" not in message
    assert "S3BlobStore" in message
