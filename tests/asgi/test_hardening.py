"""Issue 11's server-side findings: odd numbers (12), a full disk (13), shared
upload sessions (7) and capped ones (20); each test fails without its fix."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import dockerconnect.asgi._uploads as uploads_module
from dockerconnect import Digest
from dockerconnect.asgi import UploadSessions, create_app
from dockerconnect.testing import random_blob

from ._support import client_for, make_resolver, oci_error, serve, session_files

pytestmark = pytest.mark.anyio

HUGE = "9" * 5000


# -- finding 12: numbers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status", "length"),
    [
        (f"bytes={HUGE}-", 416, None),  # starts past any blob
        (f"bytes=0-{HUGE}", 206, 1000),  # ends past the blob: clamped
        (f"bytes=-{HUGE}", 206, 1000),  # a suffix longer than the blob: all of it
        ("bytes=" + "0" * 5000 + "5-9", 206, 5),  # leading zeros are still a number
        ("bytes=²-", 200, 1000),  # not ASCII digits: not a range, ignored (RFC 9110)
        ("bytes=0-²", 200, 1000),
    ],
)
async def test_odd_ranges_are_typed_answers(
    tmp_path: Path, header: str, status: int, length: int | None
) -> None:
    data = random_blob(1000, 3)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        r = await env.client.get(
            f"/v2/app/blobs/{digest}", headers={"range": header.encode("latin-1")}
        )
        if status == 416:
            oci_error(r, 416, "RANGE_INVALID")
            assert r.headers["content-range"] == "bytes */1000"
        else:
            assert r.status_code == status, r.text
            assert len(r.content) == length


@pytest.mark.parametrize("n", [HUGE, "%C2%B2", "-1", "1e3", "٣"])
async def test_odd_page_sizes_are_400(tmp_path: Path, n: str) -> None:
    async with serve(tmp_path) as env:
        for path in ("/v2/_catalog", "/v2/app/tags/list"):
            r = await env.client.get(f"{path}?n={n}")
            error = oci_error(r, 400, "PAGINATION_NUMBER_INVALID")
            assert len(error["message"]) < 200  # the 5000 digits are not echoed back
        assert env.counted.total == 0


@pytest.mark.parametrize(
    "content_range", [f"0-{HUGE}", f"{HUGE}-{HUGE}", "0-²", "²-3", f"bytes 0-{HUGE}/*"]
)
async def test_odd_content_ranges_are_416_and_keep_the_session(
    tmp_path: Path, content_range: str
) -> None:
    async with serve(tmp_path) as env:
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.patch(
            location, content=b"abc", headers={"content-range": content_range.encode("latin-1")}
        )
        oci_error(r, 416, "RANGE_INVALID")
        assert r.headers["range"] == "0-0"
        status = await env.client.get(location)
        assert status.status_code == 204 and status.headers["range"] == "0-0"


async def test_odd_content_length_is_not_a_number(tmp_path: Path) -> None:
    data = b"manifest-ish"
    async with serve(tmp_path) as env:
        r = await env.client.put(
            "/v2/app/manifests/v1", content=data, headers={"content-length": HUGE[:30]}
        )
        assert r.status_code < 500, r.text


# -- finding 13: a full disk ----------------------------------------------------------------


async def test_chunked_upload_on_a_full_disk_is_a_typed_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = uploads_module._write_all
    calls = 0

    def filling_disk(fd: int, data: bytes, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            # Half a chunk reaches the disk, then it is full.
            real_write(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data, offset)

    monkeypatch.setattr(uploads_module, "_write_all", filling_disk)
    first = random_blob(100_000, 4)
    async with serve(tmp_path) as env:
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        r = await env.client.patch(
            location, content=first, headers={"content-range": f"0-{len(first) - 1}"}
        )
        assert r.status_code == 202 and r.headers["range"] == f"0-{len(first) - 1}"
        r = await env.client.patch(
            location, content=first, headers={"content-range": f"{len(first)}-199999"}
        )
        assert r.status_code == 507, r.text
        body = r.json()["errors"][0]
        assert "full" in body["message"] and "No space left" in body["message"]
        # Nothing half-written: the session is exactly the first chunk.
        status = await env.client.get(location)
        assert status.headers["range"] == f"0-{len(first) - 1}"
        (path,) = session_files(tmp_path / "uploads")
        assert path.read_bytes() == first


# -- finding 20: capped sessions ---------------------------------------------------------------


async def test_upload_sessions_are_capped_per_repository_and_in_total(tmp_path: Path) -> None:
    async with serve(tmp_path, max_sessions=5, max_sessions_per_repository=3) as env:
        locations = []
        for _ in range(3):
            r = await env.client.post("/v2/app/blobs/uploads/")
            assert r.status_code == 202
            locations.append(r.headers["location"])
        oci_error(await env.client.post("/v2/app/blobs/uploads/"), 429, "TOOMANYREQUESTS")
        for _ in range(2):
            assert (await env.client.post("/v2/other/blobs/uploads/")).status_code == 202
        oci_error(await env.client.post("/v2/third/blobs/uploads/"), 429, "TOOMANYREQUESTS")
        assert len(session_files(tmp_path / "uploads")) == 5
        # Ending a session frees its place.
        assert (await env.client.delete(locations[0])).status_code == 204
        assert (await env.client.post("/v2/third/blobs/uploads/")).status_code == 202
        # A monolithic upload needs no session, whatever the count.
        data = b"monolithic"
        r = await env.client.post(
            f"/v2/app/blobs/uploads/?digest={Digest.from_bytes(data)}", content=data
        )
        assert r.status_code == 201


# -- finding 7: sessions shared by servers, surviving restarts ----------------------------------


async def _lifespan(app: Any, tg: anyio.abc.TaskGroup) -> Any:
    """Start ``app``'s lifespan in ``tg``; the function that shuts it down."""
    to_app, inbox = anyio.create_memory_object_stream[dict[str, Any]](4)
    outbox, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.receive, outbox.send)
    await to_app.send({"type": "lifespan.startup"})
    assert (await from_app.receive())["type"] == "lifespan.startup.complete"

    async def shutdown() -> None:
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
        for stream in (to_app, inbox, outbox, from_app):
            stream.close()

    return shutdown


async def test_a_second_server_keeps_the_first_ones_sessions(tmp_path: Path) -> None:
    upload_dir = tmp_path / "store" / "uploads"
    data = random_blob(300_000, 5)
    digest = Digest.from_bytes(data)
    resolver_a, _, _ = make_resolver()
    resolver_b, _, _ = make_resolver()
    app_a = create_app(resolver_a, upload_dir=upload_dir)
    app_b = create_app(resolver_b, upload_dir=upload_dir)
    async with anyio.create_task_group() as tg:
        stop_a = await _lifespan(app_a, tg)
        async with client_for(app_a) as a:
            location = (await a.post("/v2/app/blobs/uploads/")).headers["location"]
            r = await a.patch(
                location, content=data[:100_000], headers={"content-range": "0-99999"}
            )
            assert r.status_code == 202
            # Server B starts on the same store: A's live session stays whole.
            stop_b = await _lifespan(app_b, tg)
            assert len(session_files(upload_dir)) == 1
            r = await a.patch(
                location, content=data[100_000:200_000], headers={"content-range": "100000-199999"}
            )
            assert r.status_code == 202 and r.headers["range"] == "0-199999"
            # Either server continues the session: its state is on disk.
            async with client_for(app_b) as b:
                assert (await b.get(location)).headers["range"] == "0-199999"
                r = await b.put(f"{location}?digest={digest}", content=data[200_000:])
                assert r.status_code == 201, r.text
                assert (await b.get(f"/v2/app/blobs/{digest}")).content == data
            await stop_b()
        await stop_a()
    assert session_files(upload_dir) == []


async def test_sessions_survive_a_restart(tmp_path: Path) -> None:
    upload_dir = tmp_path / "uploads"
    data = random_blob(50_000, 6)
    async with serve(tmp_path, upload_dir=upload_dir) as env:
        location = (await env.client.post("/v2/app/blobs/uploads/")).headers["location"]
        await env.client.patch(
            location, content=data[:20_000], headers={"content-range": "0-19999"}
        )
    # A new process: a new app, a new resolver, the same directory.
    async with serve(tmp_path, upload_dir=upload_dir) as env:
        assert (await env.client.get(location)).headers["range"] == "0-19999"
        r = await env.client.put(
            f"{location}?digest={Digest.from_bytes(data)}", content=data[20_000:]
        )
        assert r.status_code == 201, r.text


async def test_only_dead_sessions_are_swept(tmp_path: Path) -> None:
    now = [time.time()]
    sessions = UploadSessions(tmp_path, ttl=100.0, clock=lambda: now[0])
    old = await sessions.new("app")
    locked = await sessions.new("app")
    fresh = await sessions.new("other")
    past = now[0] - 1000
    for upload in (old, locked):
        os.utime(upload.path, (past, past))
    async with sessions.locked(await sessions.get("app", locked.id)):
        # Another process's writer holds ``locked``: alive, however old.
        assert await sessions.sweep() == 1
    assert not old.path.exists()
    assert locked.path.exists() and fresh.path.exists()
    now[0] += 200  # ``fresh`` now untouched for longer than the ttl
    os.utime(locked.path, (past, past))
    assert await sessions.sweep() == 2
    assert session_files(tmp_path) == []


# -- finding 5: a range of a cold blob is served verified ------------------------------------


@pytest.mark.parametrize("header", ["bytes=0-1023", "bytes=-1024", "bytes=4096-8191"])
async def test_range_of_a_cold_corrupt_blob_is_an_error_not_wrong_bytes(
    tmp_path: Path, header: str
) -> None:
    data = random_blob(8 * 1024 * 1024, 81)
    async with serve(tmp_path) as env:
        digest = env.upstream.add_blob("app", data)
        env.upstream.faults.corrupt_blobs = True
        for _ in range(2):  # and again on a retry: a mismatch is never remembered as good
            r = await env.client.get(f"/v2/app/blobs/{digest}", headers={"range": header})
            oci_error(r, 502, "DIGEST_INVALID")
        assert await env.resolver.blobs.stat(digest) is None  # nothing cached
        env.upstream.faults.corrupt_blobs = False
        r = await env.client.get(f"/v2/app/blobs/{digest}", headers={"range": "bytes=0-1023"})
        assert r.status_code == 206 and r.content == data[:1024]
        assert r.headers["content-range"] == f"bytes 0-1023/{len(data)}"
