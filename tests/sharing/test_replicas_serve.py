"""Three ``dockerconnect serve`` replicas sharing nothing but Redis and an S3
endpoint, run from the guide's configuration file: one upstream GET per blob.

The file is the ``toml`` block of docs/guides/replicas.md as written; only
the connector's URL is pointed at the local ``docker-registry``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import anyio
import pytest
from _procs import ROOT, Serve, blob_gets, environment, pull_many, serving_pids
from backend_servers import MotoServer, RedisServer

from dockerconnect.testing import DistributionRegistry, push_content, random_image

GUIDE = ROOT / "docs" / "guides" / "replicas.md"
MiB = 1 << 20
REPO = "team/app"

pytestmark = pytest.mark.e2e


def guide_config() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, "the guide shows one configuration file"
    return blocks[0]


def test_three_served_replicas_fetch_each_blob_once(
    tmp_path: Path,
    moto_server: MotoServer,
    redis_server: RedisServer,
    upstream: DistributionRegistry,
) -> None:
    config = guide_config().replace("https://registry-1.docker.io", upstream.url)
    file = tmp_path / "replica.toml"
    file.write_text(config)
    moto_server.client().create_bucket(Bucket="registry-cache")
    image = random_image(layers=4, layer_size=8 * MiB, layer_format="raw", seed=17)
    anyio.run(push_content, upstream.url, REPO, image)
    env = environment(
        DOCKERCONNECT_S3_ENDPOINT=moto_server.url,
        DOCKERCONNECT_REDIS_URL=redis_server.url,
        AWS_ACCESS_KEY_ID=moto_server.access_key,
        AWS_SECRET_ACCESS_KEY=moto_server.secret_key,
        AWS_DEFAULT_REGION=moto_server.region,
    )
    replicas: list[Serve] = []
    try:
        for n in range(3):
            args = [
                "--config",
                str(file),
                "--host",
                "127.0.0.1",
                "--store",
                str(tmp_path / f"r{n}"),
            ]
            replicas.append(Serve(args, tmp_path / f"r{n}.log", env=env, log_level="info"))
        urls = [r.url for r in replicas]
        received = anyio.run(functools.partial(pull_many, stagger=0.02), urls, REPO, image, 16)
    finally:
        for replica in replicas:
            replica.stop()
    assert received == 16 * sum(len(b) for b in image.blobs.values())
    for digest, data in image.blobs.items():
        assert blob_gets(upstream, REPO, str(digest)) == [len(data)], digest
    # Every replica served every layer: each but one waited for another's fetch.
    for n in range(3):
        served = serving_pids(tmp_path / f"r{n}.log", REPO)
        assert all(str(layer.digest) in served for layer in image.manifest.layers), n
    objects = moto_server.client().list_objects_v2(Bucket="registry-cache", Prefix="blobs/")
    assert sorted(o["Size"] for o in objects["Contents"]) == sorted(
        len(b) for b in image.blobs.values()
    )
