"""Resolvers over one filesystem root fetch each blob from upstream once between them.

Two ``FilesystemBlobStore`` instances over one root hold separate open files,
so their ``flock`` locks conflict exactly as two processes' do: these tests
show the cross-process rules in one process, on asyncio and trio. Each
resolver has its own counting connector over one fake upstream, so what
reached the upstream is counted per "process". Real processes are in
``test_workers.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dockerconnect import (
    Digest,
    FilesystemBlobStore,
    FilesystemManifestStore,
    Resolver,
)
from dockerconnect._flight import TAIL_SIZE
from dockerconnect._fsfetch import HEADER_SIZE, FilesystemFetches
from dockerconnect._resolve.shared import FilesystemGate
from dockerconnect._stream import CHUNK_SIZE
from dockerconnect.errors import DockerConnectError, UpstreamDigestMismatch
from dockerconnect.testing import CountingConnector, FakeUpstream

pytestmark = pytest.mark.anyio

MiB = 1 << 20
REPO = "team/app"


def blob(size: int, seed: int = 7) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size][::-1] + bytes([seed])


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream("up")


def resolver(root: Path, upstream: FakeUpstream, name: str) -> tuple[Resolver, CountingConnector]:
    counting = CountingConnector(upstream)
    return (
        Resolver(
            name,
            manifests=FilesystemManifestStore(root),
            blobs=FilesystemBlobStore(root, name=name),
            connectors=[counting],
        ),
        counting,
    )


def gate(r: Resolver) -> FilesystemGate:
    found = r._blobs.gate
    assert isinstance(found, FilesystemGate)
    return found


async def read(r: Resolver, digest: Digest) -> bytes:
    async with await r.open_blob(REPO, digest) as stream:
        return b"".join([chunk async for chunk in stream])


async def until(condition: object, what: str) -> None:
    with anyio.fail_after(20, shield=False):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.005)


def claimed(root: Path, digest: Digest) -> bool:
    """Whether an in-progress file for ``digest`` is left under ``root``."""
    return os.path.exists(FilesystemFetches(root).path(digest))


def leftovers(root: Path) -> list[str]:
    return os.listdir(root / "tmp")


@pytest.fixture
def held(tmp_path: Path) -> Iterator[list[int]]:
    """File descriptors a test holds as a "dead" leader; closed at the end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def leave_prefix(root: Path, digest: Digest, size: int, prefix: bytes, *, lock: bool) -> int:
    """Write an in-progress file as a leader would have, holding it if ``lock``."""
    path = FilesystemFetches(root).path(digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if lock:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    header = json.dumps({"size": size, "source": "up"}).encode().ljust(HEADER_SIZE - 1) + b"\n"
    os.pwrite(fd, header + prefix, 0)
    return fd


async def test_two_resolvers_over_one_root_fetch_a_blob_once(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data = blob(3 * MiB)
    digest = upstream.add_blob(REPO, data)
    upstream.faults.gate = anyio.Event()
    a, count_a = resolver(tmp_path, upstream, "a")
    b, count_b = resolver(tmp_path, upstream, "b")
    got: dict[str, bytes] = {}

    async def pull(r: Resolver, key: str) -> None:
        got[key] = await read(r, digest)

    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(pull, a, "a1")
        await until(lambda: count_a.calls["open_blob"] == 1, "a fetching")
        tg.start_soon(pull, b, "b1")
        tg.start_soon(pull, b, "b2")
        await until(lambda: gate(b).followed == 1, "b following")
        upstream.faults.delay = 0.001  # bytes land while b follows them
        upstream.faults.gate.set()
    assert got == {"a1": data, "b1": data, "b2": data}
    assert count_a.opened[digest] + count_b.opened[digest] == 1
    assert count_b.calls["open_blob"] == 0
    assert count_a.bytes_sent == len(data)
    assert not claimed(tmp_path, digest)
    assert await FilesystemBlobStore(tmp_path).stat(digest) is not None


async def test_a_follower_takes_over_a_dead_leader_with_range(
    tmp_path: Path, upstream: FakeUpstream, held: list[int]
) -> None:
    data = blob(4 * MiB)
    digest = upstream.add_blob(REPO, data)
    prefix = 3 * MiB // 2 + 123
    # A leader that holds the file and has written a prefix...
    held.append(leave_prefix(tmp_path, digest, len(data), data[:prefix], lock=True))
    b, count_b = resolver(tmp_path, upstream, "b")
    c, count_c = resolver(tmp_path, upstream, "c")
    got: dict[str, bytes] = {}

    async def pull(r: Resolver, key: str) -> None:
        got[key] = await read(r, digest)

    async with b, c, anyio.create_task_group() as tg:
        tg.start_soon(pull, b, "b")
        tg.start_soon(pull, c, "c")
        await until(lambda: gate(b).followed == 1 and gate(c).followed == 1, "following")
        # ...and dies: the kernel drops its lock.
        os.close(held.pop())
    assert got == {"b": data, "c": data}
    # One of them took over from the prefix; the other followed it.
    assert count_b.bytes_sent + count_c.bytes_sent == len(data) - prefix
    assert count_b.opened[digest] + count_c.opened[digest] == 1
    assert gate(b).takeovers + gate(c).takeovers == 1
    assert not claimed(tmp_path, digest)


async def test_a_prefix_left_by_a_dead_leader_is_resumed(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data = blob(2 * MiB)
    digest = upstream.add_blob(REPO, data)
    prefix = MiB + 5
    os.close(leave_prefix(tmp_path, digest, len(data), data[:prefix], lock=False))
    b, count_b = resolver(tmp_path, upstream, "b")
    async with b:
        assert await read(b, digest) == data
    assert count_b.bytes_sent == len(data) - prefix
    assert gate(b).takeovers == 1
    assert await FilesystemBlobStore(tmp_path).stat(digest) is not None


async def test_a_corrupt_prefix_fails_one_fetch_and_is_dropped(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data = blob(2 * MiB)
    digest = upstream.add_blob(REPO, data)
    prefix = MiB + 5
    bad = bytes(prefix)  # zeros: what a crash before writeback leaves
    os.close(leave_prefix(tmp_path, digest, len(data), bad, lock=False))
    b, count_b = resolver(tmp_path, upstream, "b")
    store = FilesystemBlobStore(tmp_path)
    async with b:
        with pytest.raises(UpstreamDigestMismatch):
            await read(b, digest)
        assert await store.stat(digest) is None
        assert not claimed(tmp_path, digest)
        assert leftovers(tmp_path) == []
        # The next fetch starts from byte 0.
        count_b.reset()
        assert await read(b, digest) == data
    assert count_b.bytes_sent == len(data)


async def test_a_leader_that_finds_nothing_leaves_no_claim(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    data = blob(MiB // 2)
    elsewhere = FakeUpstream("elsewhere")
    digest = elsewhere.add_blob(REPO, data)
    a, count_a = resolver(tmp_path, upstream, "a")  # its upstream lacks the blob
    b, count_b = resolver(tmp_path, elsewhere, "b")
    async with a, b:
        with pytest.raises(DockerConnectError):
            await read(a, digest)
        assert count_a.calls["open_blob"] == 1
        assert not claimed(tmp_path, digest)
        assert await read(b, digest) == data
    assert count_b.opened[digest] == 1


async def test_a_blob_taken_over_from_a_prefix_is_marked_cached(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """The takeover commits through the same path as any fetch: within
    retention's admission, and marked as cached through its connector, so
    retention may remove it later (an unmarked blob is kept for ever)."""
    data = blob(2 * MiB)
    digest = upstream.add_blob(REPO, data)
    os.close(leave_prefix(tmp_path, digest, len(data), data[: MiB + 9], lock=False))
    b, _ = resolver(tmp_path, upstream, "b")
    async with b:
        assert await read(b, digest) == data
    assert gate(b).takeovers == 1
    cached = {entry.digest: entry for entry in await FilesystemBlobStore(tmp_path).cached()}
    assert digest in cached
    assert cached[digest].size == len(data)
    assert cached[digest].source == "up"


async def test_a_follower_holds_a_bounded_tail_of_the_leaders_bytes(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """A follower's flight reads the leader's file back, so it drops what it
    has handed on beyond the tail instead of holding the whole blob."""
    data = blob(12 * MiB)
    digest = upstream.add_blob(REPO, data)
    upstream.faults.gate = anyio.Event()
    a, count_a = resolver(tmp_path, upstream, "a")
    b, count_b = resolver(tmp_path, upstream, "b")
    got: dict[str, bytes] = {}
    peak = 0

    async def pull(r: Resolver, key: str) -> None:
        got[key] = await read(r, digest)

    async def watch() -> None:
        nonlocal peak
        while True:
            for flight in list(b._blobs._flights.values()):
                peak = max(peak, flight._tail_bytes)
            await anyio.sleep(0.001)

    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(pull, a, "a")
        await until(lambda: count_a.calls["open_blob"] == 1, "a fetching")
        tg.start_soon(pull, b, "b")
        await until(lambda: gate(b).followed == 1, "b following")
        tg.start_soon(watch)
        upstream.faults.delay = 0.001
        upstream.faults.gate.set()
        await until(lambda: len(got) == 2, "both read")
        tg.cancel_scope.cancel()
    assert got == {"a": data, "b": data}
    assert count_a.opened[digest] + count_b.opened[digest] == 1
    assert 0 < peak <= TAIL_SIZE + 2 * CHUNK_SIZE
