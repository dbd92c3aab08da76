"""A cold manifest is served verified before its durable commit (fsync, rename);
until the commit ends the next request for the manifest or its tag gets the
same bytes from memory, never the upstream; a failed commit costs the cached
copy, never the client's answer; a push never races the commit it replaces."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from dockerconnect import FilesystemManifestStore, MemoryBlobStore, Resolver
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio

#: A guard against a hang, never a timing assertion.
GUARD = 60


@contextmanager
def file_fsync(monkeypatch: pytest.MonkeyPatch, instead: Callable[[], None]) -> Iterator[None]:
    """``os.fsync`` of regular files (a manifest's or tag's temporary file) runs
    ``instead`` first; directories sync as usual."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            instead()
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield


def resolver(tmp_path: Path, counted: CountingConnector) -> Resolver:
    return Resolver(
        "local",
        manifests=FilesystemManifestStore(tmp_path / "manifests"),
        blobs=MemoryBlobStore(),
        connectors=[counted],
    )


def manifest_files(tmp_path: Path) -> list[Path]:
    top = tmp_path / "manifests" / "repositories"
    return [p for p in top.rglob("*") if p.is_file()] if top.exists() else []


async def test_a_cold_manifest_is_answered_once_committed_and_held_for_readers_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = random_image(seed=71)
    digest = image.manifest.digest
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)
    syncing, release = threading.Event(), threading.Event()

    def stuck() -> None:
        syncing.set()
        release.wait(GUARD)

    got: dict[str, bytes] = {}
    with file_fsync(monkeypatch, stuck):
        try:
            async with resolver(tmp_path, counted) as r, anyio.create_task_group() as tg:
                with anyio.fail_after(GUARD):

                    async def first() -> None:
                        got["first"] = (await r.get_manifest("app", "v1")).data

                    tg.start_soon(first)
                    assert await anyio.to_thread.run_sync(syncing.wait, GUARD)
                    # Not answered while its file is stuck in fsync: the answer
                    # comes once it is in the store (for other processes too).
                    await anyio.sleep(0.05)
                    assert "first" not in got
                    # Meanwhile this process's other requests, by tag and by
                    # digest, get the held verified copy without the upstream.
                    assert (await r.get_manifest("app", "v1")).data == image.manifest.data
                    assert (await r.get_manifest("app", str(digest))).data == image.manifest.data
                    assert (await r.head_manifest("app", "v1")).digest == digest
                    assert counted.calls == {"get_manifest": 1}
                    release.set()
        finally:
            release.set()
    assert got == {"first": image.manifest.data}
    store = FilesystemManifestStore(tmp_path / "manifests")
    stored = await store.get_manifest("app", digest)
    assert stored is not None and stored.data == image.manifest.data
    record = await store.get_tag("app", "v1")
    assert record is not None and record.digest == digest and record.source == "up"
    assert counted.calls == {"get_manifest": 1}
    assert os.listdir(tmp_path / "manifests" / "tmp") == []


async def test_a_push_waits_for_the_commit_of_the_tag_it_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached, pushed = random_image(seed=72), random_image(seed=73)
    upstream = FakeUpstream("up")
    upstream.add("app", cached, tag="v1")
    upstream.add("app", pushed)  # its blobs resolve through the connector
    counted = CountingConnector(upstream)
    syncing, release = threading.Event(), threading.Event()

    def stuck() -> None:
        syncing.set()
        release.wait(GUARD)

    with file_fsync(monkeypatch, stuck):
        try:
            async with resolver(tmp_path, counted) as r, anyio.create_task_group() as tg:
                with anyio.fail_after(GUARD):
                    tg.start_soon(r.get_manifest, "app", "v1")
                    assert await anyio.to_thread.run_sync(syncing.wait, GUARD)
                    done = anyio.Event()

                    async def push() -> None:
                        await r.push_manifest(
                            "app",
                            pushed.manifest.data,
                            media_type=pushed.manifest.media_type,
                            tag="v1",
                        )
                        done.set()

                    tg.start_soon(push)
                    await anyio.sleep(0.05)
                    assert not done.is_set()  # waiting for the cached tag's commit
                    release.set()
                    await done.wait()
        finally:
            release.set()
        async with resolver(tmp_path, counted) as r:
            record = await r.manifests.get_tag("app", "v1")
            # The push came last: the commit of the cached tag never overwrote it.
            assert record is not None and record.local
            assert record.digest == pushed.manifest.digest
            assert (await r.get_manifest("app", "v1")).digest == pushed.manifest.digest


async def test_a_failed_manifest_commit_keeps_the_answer_and_fetches_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = random_image(seed=74)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    counted = CountingConnector(upstream)

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with file_fsync(monkeypatch, full):
        async with resolver(tmp_path, counted) as r:
            assert (await r.get_manifest("app", "v1")).data == image.manifest.data
            await r.wait_idle()
            # Not cached, nothing half-written, and the next request fetches again.
            assert await r.manifests.get_manifest("app", image.manifest.digest) is None
            assert await r.manifests.get_tag("app", "v1") is None
            assert manifest_files(tmp_path) == []
            assert os.listdir(tmp_path / "manifests" / "tmp") == []
            assert (await r.get_manifest("app", "v1")).data == image.manifest.data
            assert counted.calls == {"get_manifest": 2}


async def test_closing_waits_for_the_manifest_commit(tmp_path: Path) -> None:
    image = random_image(seed=75)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    async with resolver(tmp_path, CountingConnector(upstream)) as r:
        await r.get_manifest("app", "v1")
    # Left right after the answer: the commit still finished.
    store = FilesystemManifestStore(tmp_path / "manifests")
    record = await store.get_tag("app", "v1")
    assert record is not None and record.digest == image.manifest.digest
    stored = await store.get_manifest("app", image.manifest.digest)
    assert stored is not None and stored.data == image.manifest.data


async def test_a_listing_sees_a_tag_still_being_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = random_image(seed=76)
    upstream = FakeUpstream("up")
    upstream.add("app", image, tag="v1")
    upstream.can_list = False  # only the local store can list the tag
    counted = CountingConnector(upstream)
    release = threading.Event()
    with file_fsync(monkeypatch, lambda: release.wait(GUARD)):
        try:
            async with resolver(tmp_path, counted) as r:
                with anyio.fail_after(GUARD):
                    async with anyio.create_task_group() as tg:
                        listed: list[list[str]] = []

                        async def list_tags() -> None:
                            listed.append(await r.tags("app"))

                        tg.start_soon(r.get_manifest, "app", "v1")
                        await anyio.sleep(0.05)  # its commit is stuck in fsync
                        tg.start_soon(list_tags)
                        await anyio.sleep(0.05)
                        assert listed == []  # waiting for the commit
                        release.set()
                    assert listed == [["v1"]]
        finally:
            release.set()


async def test_settling_waits_only_for_the_commits_begun_before_it() -> None:
    """A push or a listing waits for the commits in flight when it asks, not
    for every commit begun while it waits: steady cold traffic cannot starve it."""
    from dockerconnect._resolve.tasks import Tasks

    tasks = Tasks("t")
    await tasks.open()
    gates = [anyio.Event(), anyio.Event()]
    settled = anyio.Event()

    async def commit(gate: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await gate.wait()

    async def settle() -> None:
        await tasks.settled()
        settled.set()

    try:
        with anyio.fail_after(10):
            await tasks.start(commit, gates[0])
            async with anyio.create_task_group() as tg:
                tg.start_soon(settle)
                await anyio.wait_all_tasks_blocked()
                await tasks.start(commit, gates[1])  # begun after the wait began
                assert not settled.is_set()
                gates[0].set()
                await settled.wait()  # while the later commit still runs
                assert not gates[1].is_set()
                gates[1].set()
            await tasks.wait_idle()
    finally:
        await tasks.close()
