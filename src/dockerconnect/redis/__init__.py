"""Manifests, tags and referrers in Redis, shared by replicas.

Install with ``pip install 'dockerconnect[redis]'``. See
:class:`RedisManifestStore` and the guide "Running several replicas".
"""

from dockerconnect.redis._store import RedisManifestStore, referrer_descriptor

__all__ = ["RedisManifestStore", "referrer_descriptor"]
