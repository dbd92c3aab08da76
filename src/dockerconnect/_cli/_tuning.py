"""Process-wide tuning that ``dockerconnect serve`` applies to its own process.

The library imported into someone else's program changes nothing here: only
the command line, which owns the whole server process, calls
:func:`bound_read_ahead` before the event loop starts.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["READ_AHEAD_LIMIT", "bound_read_ahead"]

log = logging.getLogger("dockerconnect.serve")

#: Received bytes an asyncio TCP stream holds unread before its event loop
#: stops reading the socket; what else has arrived waits in the kernel's
#: socket buffer, and TCP's own flow control slows the sender.
READ_AHEAD_LIMIT = 1024 * 1024
_MARK = "_dockerconnect_read_ahead"


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
