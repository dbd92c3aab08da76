"""``dockerconnect export``: images written as an OCI image layout, with a progress bar.

::

    dockerconnect export --output DIR [--store DIR] [--upstream URL]... [--layout DIR]...
                         [--platform OS/ARCH[/VARIANT]]... [--referrers] [--qualified]
                         [--quiet] REPOSITORY REFERENCE...

The images come from a :class:`~dockerconnect.Resolver`: over the filesystem
stores in ``--store`` (what ``dockerconnect serve --store`` uses; blobs held
there are hard-linked into the layout), asking ``--upstream`` registries and
``--layout`` directories in the order given. Without ``--store`` nothing is
cached and every blob is copied. Progress goes to standard error: a bar on a
terminal, one line per blob otherwise. An interrupted export (Ctrl-C) leaves
a valid layout; running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TextIO

import anyio

from dockerconnect._filesystem import FilesystemBlobStore, FilesystemManifestStore
from dockerconnect._memory import MemoryBlobStore, MemoryManifestStore
from dockerconnect._policy import CachingPolicy
from dockerconnect._protocols import BlobStore, Connector, ManifestStore
from dockerconnect._resolver import Resolver
from dockerconnect.errors import DockerConnectError
from dockerconnect.layout._connector import OciLayoutConnector
from dockerconnect.layout._export import ExportEvent, ExportReport, export_layout

__all__ = ["ProgressBar", "export_main"]

PROG = "dockerconnect export"


class ProgressBar:
    """Draws :class:`~dockerconnect.layout.ExportEvent`\\ s on ``stream``.

    On a terminal, one line redrawn at most ten times a second; elsewhere
    (a log, a pipe), one line per blob in place.
    """

    def __init__(self, stream: TextIO, *, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.total_bytes = 0
        self.total_blobs = 0
        self.done_bytes = 0
        self.blobs = 0
        self._partial = 0
        self._drawn = 0.0

    def __call__(self, event: ExportEvent) -> None:
        if event.kind == "planned":
            self.total_bytes, self.total_blobs = event.total_bytes, event.total_blobs
        elif event.kind == "bytes":
            self._partial += event.size
        elif event.kind == "blob":
            self.blobs += 1
            self.done_bytes = event.done_bytes
            self._partial = 0
            if not self.tty:
                assert event.digest is not None
                self.stream.write(
                    f"{self.blobs}/{self.total_blobs} {event.digest} "
                    f"{_size(event.size)} {event.how}\n"
                )
        if self.tty:
            self._draw(force=event.kind in ("planned", "blob", "done"))
        if event.kind == "done" and self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        done = min(self.done_bytes + self._partial, self.total_bytes)
        share = done / self.total_bytes if self.total_bytes else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] {share:4.0%} {_size(done)}/{_size(self.total_bytes)} "
            f"{self.blobs}/{self.total_blobs} blobs"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write images as an OCI image layout (image-spec image-layout.md)."
    )
    parser.add_argument("repository", help="the repository, e.g. library/nginx")
    parser.add_argument("references", nargs="+", metavar="REFERENCE", help="tags or digests")
    parser.add_argument("--output", "-o", required=True, type=Path, help="the layout directory")
    parser.add_argument("--store", type=Path, help="filesystem stores to read and cache in")
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="URL", help="a registry (repeatable)"
    )
    parser.add_argument(
        "--layout", action="append", default=[], type=Path, help="an OCI layout to read from"
    )
    parser.add_argument(
        "--platform", action="append", dest="platforms", help="only these index children"
    )
    parser.add_argument("--referrers", action="store_true", help="also export referrers")
    parser.add_argument(
        "--qualified", action="store_true", help="name entries REPOSITORY:TAG, not TAG"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return parser


def export_main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """Run ``dockerconnect export``; returns the exit status.

    0 on success, 1 on an error (one line on standard error), 2 for bad
    arguments, 130 when interrupted (the layout stays valid; rerun to resume).
    """
    err = stderr if stderr is not None else sys.stderr
    args = _parser().parse_args(argv)
    if not args.store and not args.upstream and not args.layout:
        err.write(f"{PROG}: error: nothing to export from: give --store, --upstream or --layout\n")
        return 2
    progress = None if args.quiet else ProgressBar(err)
    try:
        report = anyio.run(_export, args, progress)
    except KeyboardInterrupt:
        err.write(f"\n{PROG}: interrupted; {args.output} is a valid layout, rerun to resume\n")
        return 130
    except DockerConnectError as exc:
        err.write(f"\n{PROG}: error: {exc}\n")
        return 1
    if not args.quiet:
        err.write(
            f"{report.path}: {len(report.entries)} entries, {report.manifests} manifests; blobs "
            f"{report.copied} copied, {report.linked} linked, {report.skipped} already there; "
            f"{_size(report.bytes_written)} written\n"
        )
    return 0


async def _export(args: argparse.Namespace, progress: ProgressBar | None) -> ExportReport:
    from dockerconnect.http import HttpConnector

    async with AsyncExitStack() as stack:
        connectors: list[Connector] = []
        for url in args.upstream:
            connectors.append(await stack.enter_async_context(HttpConnector(url)))
        connectors.extend(OciLayoutConnector(path) for path in args.layout)
        manifests: ManifestStore
        blobs: BlobStore
        if args.store is not None:
            manifests = FilesystemManifestStore(args.store)
            blobs = FilesystemBlobStore(args.store)
            policy = CachingPolicy()
        else:
            manifests, blobs = MemoryManifestStore(), MemoryBlobStore()
            policy = CachingPolicy(cache_blobs=False)
        resolver = Resolver(
            "export", manifests=manifests, blobs=blobs, connectors=connectors, policy=policy
        )
        registry = await stack.enter_async_context(resolver)
        return await export_layout(
            registry,
            args.repository,
            args.references,
            args.output,
            referrers=args.referrers,
            platforms=args.platforms,
            progress=progress,
            qualified=args.qualified,
        )
