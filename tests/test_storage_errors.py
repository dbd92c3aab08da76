"""Issue 12: a store that cannot open its root says which path, as one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dockerconnect import FilesystemBlobStore, FilesystemManifestStore
from dockerconnect._cli import build_resolver, parse_serve
from dockerconnect._cli._config import ConfigError
from dockerconnect.errors import StorageError


@pytest.mark.parametrize("store", [FilesystemBlobStore, FilesystemManifestStore])
def test_a_store_root_that_cannot_be_made_names_its_path(
    tmp_path: Path, store: type[FilesystemBlobStore] | type[FilesystemManifestStore]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        store(blocker / "root")
    assert str(blocker / "root") in str(caught.value)
    assert not (blocker.parent / "root").exists()


def test_serve_with_an_unusable_store_is_one_config_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "spool").mkdir(parents=True)
    (store / "tmp").write_text("in the way")  # where the store keeps its temporary files
    config = parse_serve(["--store", str(store)])
    with pytest.raises(ConfigError) as caught:
        build_resolver(config)
    message = str(caught.value)
    assert message.startswith(f"--store: could not open store root {store}")
    assert os.linesep not in message
