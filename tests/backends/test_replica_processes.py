"""Replicas as separate processes, sharing nothing but Redis and the S3 endpoint,
in front of a real ``docker-registry``: one upstream GET per blob, counted
from the upstream's access log, and a replica killed mid-blob is taken over.

Each replica is ``replica_worker.py``, which fetches under the guide's
``fetch`` protocol with :class:`~dockerconnect.redis.RedisFetchCoordinator`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from backend_servers import MotoServer, RedisServer, require, unique

from dockerconnect.testing import DistributionRegistry, push_content, random_image

pytest.importorskip("aiobotocore")
pytest.importorskip("redis")

WORKER = Path(__file__).with_name("replica_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
MiB = 1 << 20


@pytest.fixture
def upstream() -> Iterator[DistributionRegistry]:
    require(
        "docker-registry (CNCF distribution)",
        DistributionRegistry.available(),
        "apt-get install docker-registry",
    )
    with DistributionRegistry() as registry:
        yield registry


def settings(
    moto: MotoServer, bucket: str, redis: RedisServer, upstream: DistributionRegistry, **more: Any
) -> dict[str, Any]:
    s3 = moto.store_args()
    return {
        "redis": redis.url,
        "bucket": bucket,
        "s3": s3,
        "upstream": upstream.url,
        "repository": "team/app",
        "lease_ttl": 30.0,
        **more,
    }


def start(config: dict[str, Any]) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, str]:
    """What a replica served: digest -> digest of the bytes it got."""
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-4000:]
    return dict(line.split() for line in out.splitlines() if not line.startswith("fetching"))


def blob_gets(upstream: DistributionRegistry, digest: str) -> list[int]:
    """The byte counts of every ``GET`` of ``digest`` in the upstream's access log."""
    pattern = re.compile(rf'"GET /v2/team/app/blobs/{re.escape(digest)} HTTP/[\d.]+" \d+ (\d+)')
    return [int(m.group(1)) for m in pattern.finditer(upstream.log_text())]


def test_three_replicas_fetch_each_blob_once(
    moto_server: MotoServer,
    bucket: str,
    redis_server: RedisServer,
    upstream: DistributionRegistry,
) -> None:
    image = random_image(layers=4, layer_size=8 * MiB, layer_format="raw", seed=1)
    anyio.run(push_content, upstream.url, "team/app", image)
    digests = [str(d) for d in image.blobs]
    prefix = unique("procs") + ":"
    replicas = [
        start(
            settings(
                moto_server,
                bucket,
                redis_server,
                upstream,
                prefix=prefix,
                owner=f"replica-{n}",
                digests=digests,
            )
        )
        for n in range(3)
    ]
    served = [finish(p) for p in replicas]
    assert served == [{d: d for d in digests}] * 3
    for digest, data in image.blobs.items():
        assert blob_gets(upstream, str(digest)) == [len(data)], digest


def test_a_replica_killed_mid_blob_is_taken_over(
    moto_server: MotoServer,
    bucket: str,
    redis_server: RedisServer,
    upstream: DistributionRegistry,
) -> None:
    # Large enough that socket buffers cannot take the whole blob before the kill.
    image = random_image(layers=1, layer_size=32 * MiB, layer_format="raw", seed=2)
    anyio.run(push_content, upstream.url, "team/app", image)
    layer = image.manifest.layers[0]
    digest = str(layer.digest)
    prefix = unique("kill") + ":"
    config = settings(
        moto_server, bucket, redis_server, upstream, prefix=prefix, lease_ttl=1.0, digests=[digest]
    )
    doomed = start({**config, "owner": "doomed", "slow": True})
    assert doomed.stdout is not None
    assert doomed.stdout.readline().strip() == f"fetching {digest}"
    others = [start({**config, "owner": f"survivor-{n}"}) for n in range(2)]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    doomed.communicate()
    served = [finish(p) for p in others]
    assert served == [{digest: digest}] * 2
    gets = blob_gets(upstream, digest)
    # The dead replica's cut-off transfer, then one survivor's (from the
    # start: S3 parts cannot be read back to resume the hash), never one each.
    assert len(gets) == 2, gets
    assert gets[0] < layer.size, gets
    assert gets[1] == layer.size, gets
    assert sum(gets) < 2 * layer.size, gets
