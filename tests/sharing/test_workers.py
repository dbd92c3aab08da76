"""Several processes over one filesystem store, in front of a real ``docker-registry``.

``dockerconnect serve --workers 4`` and 16 clients pulling one cold image of
four 8 MiB layers: one upstream ``GET`` per blob, counted from the upstream's
access log, every client's bytes checked. A process fetching a blob is
SIGKILLed mid-blob: the others finish with the right bytes, one of them
resuming with a range request, and the upstream sends less than twice the blob.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from _procs import Serve, blob_gets, environment, pull_many, serving_pids, wait_for

from dockerconnect._fsfetch import HEADER_SIZE, FilesystemFetches
from dockerconnect.testing import DistributionRegistry, push_content, random_image

WORKER = Path(__file__).with_name("fs_worker.py")
MiB = 1 << 20
REPO = "team/app"

pytestmark = pytest.mark.e2e


def test_four_workers_fetch_each_blob_once_for_sixteen_clients(
    tmp_path: Path, upstream: DistributionRegistry
) -> None:
    image = random_image(layers=4, layer_size=8 * MiB, layer_format="raw", seed=15)
    anyio.run(push_content, upstream.url, REPO, image)
    args = ["--workers", "4", "--store", str(tmp_path / "store"), "--upstream", upstream.url]
    log = tmp_path / "serve.log"
    with Serve(args, log, log_level="info") as server:
        received = anyio.run(
            functools.partial(pull_many, stagger=0.05), [server.url], REPO, image, 16
        )
    assert received == 16 * sum(len(b) for b in image.blobs.values())
    for digest, data in image.blobs.items():
        assert blob_gets(upstream, REPO, str(digest)) == [len(data)], digest
    # The point: several workers served each layer (so they shared one fetch).
    served = serving_pids(log, REPO)
    layers = [str(layer.digest) for layer in image.manifest.layers]
    assert all(len(served[d]) >= 2 for d in layers), served


def start(settings: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment(),
    )


def landed(path: str) -> int:
    try:
        return os.stat(path).st_size - HEADER_SIZE
    except FileNotFoundError:
        return 0


def finish(process: subprocess.Popen[str]) -> dict[str, str]:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-4000:]
    return dict(line.split() for line in out.splitlines() if not line.startswith("fetching"))


def test_a_worker_killed_mid_blob_is_taken_over_with_range(
    tmp_path: Path, upstream: DistributionRegistry
) -> None:
    # Large enough that socket buffers cannot take the whole blob before the kill.
    image = random_image(layers=1, layer_size=32 * MiB, layer_format="raw", seed=16)
    anyio.run(push_content, upstream.url, REPO, image)
    layer = image.manifest.layers[0]
    digest = str(layer.digest)
    settings = {
        "root": str(tmp_path / "store"),
        "upstream": upstream.url,
        "repository": REPO,
        "digests": [digest],
    }
    doomed = start({**settings, "name": "doomed", "slow": True})
    assert doomed.stdout is not None
    assert doomed.stdout.readline().strip() == f"fetching {digest}"
    others = [start({**settings, "name": f"survivor-{n}"}) for n in range(3)]
    # Kill it once it has shown the survivors some of the blob on disk.
    in_progress = FilesystemFetches(settings["root"]).path(layer.digest)
    wait_for("bytes in the in-progress file", lambda: landed(in_progress) > 2 * MiB, timeout=120)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    doomed.communicate()
    served = [finish(p) for p in others]
    assert served == [{digest: digest}] * 3
    gets = blob_gets(upstream, REPO, digest)
    print(f"upstream GETs of the {layer.size}-byte blob: {gets}")
    # The dead process's cut-off transfer, then one survivor's range request
    # for the rest: never a whole copy per survivor.
    assert len(gets) == 2, gets
    assert gets[0] < layer.size, gets
    assert gets[1] < layer.size, gets
    assert sum(gets) < 2 * layer.size, gets
