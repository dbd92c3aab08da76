"""Embedding the registry API: a Resolver served by ``dockerconnect.asgi``.

``dockerconnect serve`` does all of this (and more: a config file, access
control, TLS); this is the short form for an embedder who builds the
registry themselves. Run it::

    python examples/asgi_server.py --store DIR [--upstream URL ...] [--port 5000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from dockerconnect import CachingPolicy, FilesystemBlobStore, FilesystemManifestStore, Resolver
from dockerconnect.asgi import create_app
from dockerconnect.http import HttpConnector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--upstream", action="append", default=[], metavar="URL")
    args = parser.parse_args()

    store = args.store.resolve()
    blobs = FilesystemBlobStore(store, name="local")
    connectors = [HttpConnector(url) for url in args.upstream]
    resolver = Resolver(
        "local",
        manifests=FilesystemManifestStore(store),
        blobs=blobs,
        connectors=connectors,
        policy=CachingPolicy(),
    )
    app = create_app(
        resolver,
        upload_dir=store / "uploads",  # sessions survive restarts, shared by servers
        blob_path=blobs.blob_path,  # lets the server send warm blobs as files
        resources=connectors,  # each connector's HTTP client, closed at shutdown
    )
    uvicorn.run(app, host=args.host, port=args.port, lifespan="on", access_log=False)


if __name__ == "__main__":
    main()
