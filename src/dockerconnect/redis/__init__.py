"""Manifests, tags, referrers, fetch leases and misses in Redis, shared by replicas.

Install with ``pip install 'dockerconnect[redis]'``. See
:class:`RedisManifestStore` and the guide "Running several replicas".
"""

from dockerconnect.redis._coordinator import FetchLease, RedisFetchCoordinator, WaitOutcome
from dockerconnect.redis._store import RedisManifestStore

__all__ = [
    "FetchLease",
    "RedisFetchCoordinator",
    "RedisManifestStore",
    "WaitOutcome",
]
