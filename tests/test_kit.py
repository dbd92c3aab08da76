"""The testing kit tests itself: the conformance suites' teardown catches leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LEAKY = """
import asyncio
import os

import pytest

from dockerconnect.testing import ConnectorConformance, FakeUpstream

KEPT = []


class LeakyUpstream(FakeUpstream):
    async def get_manifest(self, repository, reference, *, accept=None):
        if LEAK == "fd":
            KEPT.append(os.open(os.devnull, os.O_RDONLY))
        elif LEAK == "task":
            KEPT.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600)))
        return await super().get_manifest(repository, reference, accept=accept)


class TestLeaky(ConnectorConformance):
    @pytest.fixture
    def connector_factory(self):
        async def make(repository, images):
            upstream = LeakyUpstream("leaky")
            for tag, content in images.items():
                upstream.add(repository, content, tag=tag)
            return upstream

        return make


@pytest.fixture(params=["asyncio"])
def anyio_backend(request):
    return request.param
"""


def _run_suite(tmp_path: Path, leak: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_leaky.py").write_text(f"LEAK = {leak!r}\n" + LEAKY)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "test_get_manifest_by_tag",
            str(tmp_path / "test_leaky.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_connector_suite_fails_a_connector_that_leaks_a_descriptor(tmp_path: Path) -> None:
    result = _run_suite(tmp_path, "fd")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 14 deselected, 1 error" in result.stdout
    assert "the connector left behind" in result.stdout
    assert os.devnull in result.stdout


def test_connector_suite_fails_a_connector_that_leaks_a_task(tmp_path: Path) -> None:
    result = _run_suite(tmp_path, "task")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the connector left behind" in result.stdout
    assert "sleep" in result.stdout


def test_connector_suite_passes_a_connector_that_leaks_nothing(tmp_path: Path) -> None:
    result = _run_suite(tmp_path, "none")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 14 deselected in" in result.stdout
