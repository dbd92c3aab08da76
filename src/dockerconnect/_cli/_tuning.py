"""Process-wide tuning that ``dockerconnect serve`` applies to its own process.

The library imported into someone else's program changes nothing here: only
the command line, which owns the whole server process, calls
:func:`bound_read_ahead` and :func:`limit_malloc_arenas` before the event
loop starts.
"""

from __future__ import annotations

import logging
import platform
import sys
from typing import Any

__all__ = ["MALLOC_ARENAS", "READ_AHEAD_LIMIT", "bound_read_ahead", "limit_malloc_arenas"]

log = logging.getLogger("dockerconnect.serve")

#: Received bytes an asyncio TCP stream holds unread before its event loop
#: stops reading the socket; what else has arrived waits in the kernel's
#: socket buffer, and TCP's own flow control slows the sender.
READ_AHEAD_LIMIT = 1024 * 1024
_MARK = "_dockerconnect_read_ahead"
#: glibc malloc arenas the server process may use (``M_ARENA_MAX``).
MALLOC_ARENAS = 1
#: ``mallopt``'s parameter number for the arena cap (glibc's ``malloc.h``).
_M_ARENA_MAX = -8


def bound_read_ahead(limit: int = READ_AHEAD_LIMIT) -> bool:
    """Make anyio's asyncio TCP streams (every upstream connection) stop
    reading once ``limit`` bytes are queued unread. Returns whether it applied.

    Why: anyio's stream protocol resumes reading when a task waits for data
    and pauses it when that task wakes. Under uvloop, libuv reads a readable
    socket up to 32 times (256 KiB each) before the waiting task runs, and
    the protocol queues each read: during a large download from a fast
    upstream, every wake-up moved the socket's whole buffer (several MiB on
    loopback) into memory. With the bound, the peak RSS of a cold 256 MiB
    pull fell from 12 MiB to about 4 MiB above a cold pull of small blobs
    (docs/performance.md). Reading resumes as before, when the queue is
    drained and a task waits again; the bytes and their order are unchanged.

    Idempotent. Does nothing (and returns False) with an anyio whose asyncio
    backend is laid out differently; trio reads only when asked, and needs
    no bound.
    """
    try:
        from anyio._backends._asyncio import StreamProtocol
    except ImportError:  # pragma: no cover - another anyio layout
        return False
    if getattr(StreamProtocol, _MARK, None) is not None:
        return True
    made, received = StreamProtocol.connection_made, StreamProtocol.data_received

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        self._dockerconnect_transport = transport

    def data_received(self: Any, data: bytes) -> None:
        received(self, data)
        queue = getattr(self, "read_queue", None)
        transport = getattr(self, "_dockerconnect_transport", None)
        if queue is not None and transport is not None and sum(map(len, queue)) >= limit:
            transport.pause_reading()

    StreamProtocol.connection_made = connection_made  # type: ignore[method-assign]
    StreamProtocol.data_received = data_received  # type: ignore[method-assign]
    setattr(StreamProtocol, _MARK, limit)
    log.debug("asyncio TCP streams stop reading at %d unread bytes", limit)
    return True


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """On glibc, cap malloc's arenas at ``arenas`` (``mallopt(M_ARENA_MAX)``).
    Returns whether it applied; anywhere else it does nothing.

    Why: glibc gives threads that allocate at the same time arenas of their
    own (up to eight per core), and each keeps what its thread freed. The
    server's worker threads (hashing, file writes, replays to readers who fell
    behind) then held 20 to 40 MiB more under 16 concurrent cold pulls than
    with one arena, and a cold 256 MiB pull after them peaked 10 MiB higher;
    their CPU time did not change measurably (docs/performance.md). The
    threads allocate little (the buffers come from the event loop's thread),
    so they seldom wait for the one arena's lock.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a glibc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: bool = mallopt(_M_ARENA_MAX, arenas) == 1
    log.debug("malloc arenas capped at %d: %s", arenas, applied)
    return applied
