"""``RedisManifestStore``: manifests, tags and referrers in Redis, shared by replicas.

Keys (``<p>`` is the store's ``prefix``, ``dockerconnect:`` by default)::

    <p>manifests:<repository>            hash  digest -> media type, "\\n", exact bytes
    <p>tags:<repository>                 hash  tag -> TagRecord as JSON
    <p>referrers:<repository>:<subject>  hash  referrer digest -> its Descriptor as JSON
    <p>repositories                      zset  every repository holding a manifest or a tag

Repository names never contain ``:``, so keys cannot collide. Every write
that touches more than one key is one Lua script, so two replicas racing
(one deleting the last tag while another pushes a manifest, say) never
leave the repository listing, the referrers index and the content out of
step. Redis Cluster is not supported (the scripts span hash slots); a
single primary, with replicas or Sentinel, is.

The client is redis-py's asyncio client, which runs only on asyncio; the
store keeps it on a private asyncio loop in a thread of its own
(:class:`~dockerconnect._asyncio_thread.AsyncioThread`), so the store
itself works on asyncio and trio alike.
"""

from __future__ import annotations

import json

from dockerconnect._closing import AsyncClosing
from dockerconnect._descriptor import Descriptor
from dockerconnect._digest import Digest
from dockerconnect._manifest import Manifest
from dockerconnect._protocols import TagRecord
from dockerconnect._reference import validate_repository, validate_tag
from dockerconnect.errors import InvalidInput, StorageError
from dockerconnect.redis._connection import RedisConnection, redacted

__all__ = ["RedisManifestStore"]

# KEYS: manifests, repositories[, referrers]   ARGV: digest, value, repository[, descriptor]
_PUT_MANIFEST = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 1
"""

# KEYS: manifests, tags, repositories[, referrers]   ARGV: digest, repository
_DELETE_MANIFEST = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if KEYS[4] then redis.call('HDEL', KEYS[4], ARGV[1]) end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
"""

# KEYS: tags, repositories   ARGV: tag, record, repository
_SET_TAG = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return 1
"""

# KEYS: tags, manifests, repositories   ARGV: tag, repository
_DELETE_TAG = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
"""


class RedisManifestStore(AsyncClosing):
    """A :class:`~dockerconnect.ManifestStore` in Redis, for replicas that share one.

    ``url`` is a redis-py URL (``redis://[user:password@]host:port/db``,
    ``rediss://`` for TLS, ``unix:///path?db=0``). ``prefix`` namespaces
    every key, so several registries can share one database. Manifests
    with a ``subject`` are indexed as referrers of it at once
    (:meth:`referrers`). Deleting a manifest leaves tags pointing at it
    alone, as in every store.

    Use it as an async context manager, or call :meth:`aclose`, to close
    the connections and their thread. Connection failures raise
    :class:`~dockerconnect.errors.StorageError`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "dockerconnect:",
        max_connections: int = 32,
        socket_timeout: float | None = 30.0,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise InvalidInput(
                f"RedisManifestStore needs a redis:// (or rediss://, unix://) URL, not {url!r}"
            )
        if not isinstance(prefix, str):
            raise InvalidInput(f"RedisManifestStore prefix must be a string, not {prefix!r}")
        self.url = url
        self.prefix = prefix
        self._redis = RedisConnection(
            "RedisManifestStore",
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )

    # --- keys ---------------------------------------------------------------------------

    def _manifests_key(self, repository: str) -> str:
        return f"{self.prefix}manifests:{repository}"

    def _tags_key(self, repository: str) -> str:
        return f"{self.prefix}tags:{repository}"

    def _referrers_key(self, repository: str, subject: Digest) -> str:
        return f"{self.prefix}referrers:{repository}:{subject}"

    @property
    def _repositories_key(self) -> str:
        return f"{self.prefix}repositories"

    # --- manifests ------------------------------------------------------------------------

    async def get_manifest(self, repository: str, digest: Digest) -> Manifest | None:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        value = await self._redis.call("hget", self._manifests_key(repository), str(digest))
        if value is None:
            return None
        return _decode_manifest(value, digest, repository)

    async def put_manifest(self, repository: str, manifest: Manifest) -> None:
        repository = validate_repository(repository)
        if not isinstance(manifest, Manifest):
            raise InvalidInput(f"expected a Manifest, not {type(manifest).__name__}")
        keys = [self._manifests_key(repository), self._repositories_key]
        args: list[str | bytes] = [
            str(manifest.digest),
            manifest.media_type.encode() + b"\n" + manifest.data,
            repository,
        ]
        if manifest.subject is not None:
            keys.append(self._referrers_key(repository, manifest.subject.digest))
            args.append(manifest.referrer().to_json())
        await self._redis.script(_PUT_MANIFEST, keys, args)

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        repository = validate_repository(repository)
        digest = Digest.parse(digest)
        keys = [
            self._manifests_key(repository),
            self._tags_key(repository),
            self._repositories_key,
        ]
        # A digest names immutable bytes, so the subject read here is the one
        # the script removes, whoever wrote it.
        existing = await self.get_manifest(repository, digest)
        if existing is None:
            return False
        if existing.subject is not None:
            keys.append(self._referrers_key(repository, existing.subject.digest))
        return bool(await self._redis.script(_DELETE_MANIFEST, keys, [str(digest), repository]))

    async def referrers(self, repository: str, subject: Digest) -> list[Descriptor]:
        """Descriptors of the manifests in ``repository`` whose ``subject`` is
        ``subject``, ordered by digest; ``[]`` when there are none."""
        repository = validate_repository(repository)
        subject = Digest.parse(subject)
        values = await self._redis.call("hvals", self._referrers_key(repository, subject))
        found = [Descriptor.parse(value) for value in values]
        return sorted(found, key=lambda d: str(d.digest))

    # --- tags -------------------------------------------------------------------------------

    async def get_tag(self, repository: str, tag: str) -> TagRecord | None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        value = await self._redis.call("hget", self._tags_key(repository), tag)
        if value is None:
            return None
        return _decode_record(value, repository, tag)

    async def set_tag(self, repository: str, tag: str, record: TagRecord) -> None:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        if not isinstance(record, TagRecord):
            raise InvalidInput(f"expected a TagRecord, not {type(record).__name__}")
        value = json.dumps(
            {
                "digest": str(record.digest),
                "media_type": record.media_type,
                "confirmed_at": record.confirmed_at,
                "source": record.source,
            }
        )
        keys = [self._tags_key(repository), self._repositories_key]
        await self._redis.script(_SET_TAG, keys, [tag, value, repository])

    async def delete_tag(self, repository: str, tag: str) -> bool:
        repository = validate_repository(repository)
        tag = validate_tag(tag)
        keys = [self._tags_key(repository), self._manifests_key(repository), self._repositories_key]
        return bool(await self._redis.script(_DELETE_TAG, keys, [tag, repository]))

    async def tags(self, repository: str) -> list[str] | None:
        repository = validate_repository(repository)
        names, manifests = await self._redis.pipeline(
            "HKEYS",
            ("hkeys", [self._tags_key(repository)]),
            ("exists", [self._manifests_key(repository)]),
        )
        if names:
            return sorted(name.decode() for name in names)
        return [] if manifests else None

    async def repositories(self) -> list[str]:
        names = await self._redis.call("zrange", self._repositories_key, 0, -1)
        return sorted(name.decode() for name in names)

    # --- lifetime -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections and stop their thread; safe to call more than once."""
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"RedisManifestStore({redacted(self.url)!r}, prefix={self.prefix!r})"


def _decode_manifest(value: bytes, digest: Digest, repository: str) -> Manifest:
    media_type, sep, data = value.partition(b"\n")
    if not sep:
        raise StorageError(
            "a stored manifest has no media type line", repository=repository, digest=digest
        )
    return Manifest.parse(data, media_type.decode())


def _decode_record(value: bytes, repository: str, tag: str) -> TagRecord:
    try:
        doc = json.loads(value)
        return TagRecord(
            Digest.parse(doc["digest"]),
            str(doc["media_type"]),
            float(doc["confirmed_at"]),
            doc["source"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise StorageError(
            f"the stored record of tag {tag!r} is unreadable", repository=repository
        ) from error
