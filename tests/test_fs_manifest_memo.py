"""The filesystem manifest store skips re-hashing and re-parsing a manifest whose
file holds the very bytes it verified before, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockerconnect._filesystem import FilesystemManifestStore, _ParsedManifests
from dockerconnect.errors import DigestMismatch
from dockerconnect.testing import random_image


@pytest.mark.anyio
async def test_changed_bytes_are_verified_again(tmp_path: Path) -> None:
    store = FilesystemManifestStore(tmp_path)
    manifest = random_image(seed=31).manifest
    await store.put_manifest("app", manifest)
    first = await store.get_manifest("app", manifest.digest)
    assert first is not None and first.data == manifest.data
    # The same bytes again: the very manifest parsed before.
    assert await store.get_manifest("app", manifest.digest) is first

    path = tmp_path / "repositories" / "app" / "_manifests" / "sha256" / manifest.digest.hex
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-2] ^= 0x01  # same length, one bit off
    for bad in (bytes(flipped), good + b" "):
        path.write_bytes(bad)
        with pytest.raises(DigestMismatch):
            await store.get_manifest("app", manifest.digest)

    path.write_bytes(good)
    again = await store.get_manifest("app", manifest.digest)
    assert again is not None and again.data == manifest.data
    assert await store.delete_manifest("app", manifest.digest)
    assert await store.get_manifest("app", manifest.digest) is None


def test_the_memo_is_bounded_and_drops_the_least_recent() -> None:
    memo = _ParsedManifests()
    images = [random_image(seed=40 + i).manifest for i in range(3)]
    piece = memo.LIMIT // 4 - 100
    contents = [bytes([i]) * piece for i in range(3)]
    for manifest, content in zip(images, contents, strict=True):
        memo.put(manifest.digest, content, manifest)
    assert memo.get(images[0].digest, contents[0]) is images[0]  # now the most recent
    for i in range(3, 6):
        extra = random_image(seed=40 + i).manifest
        memo.put(extra.digest, bytes([i]) * piece, extra)
    # Four pieces fit: the three newest and the one read last survive.
    assert memo.get(images[0].digest, contents[0]) is images[0]
    assert memo.get(images[1].digest, contents[1]) is None
    assert memo.get(images[2].digest, contents[2]) is None
    # Content too large for the memo is never held.
    memo.put(images[1].digest, b"x" * (memo.LIMIT // 4 + 1), images[1])
    assert memo.get(images[1].digest, b"x" * (memo.LIMIT // 4 + 1)) is None
