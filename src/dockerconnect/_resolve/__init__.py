"""The Resolver's rooms, one concept to a module.

- :mod:`.sources`: ask the serving connectors in order (misses, suspects,
  counting, the stall limit, giving up with the most informative error);
- :mod:`.tasks`: background work and one generic single-flight;
- :mod:`.manifests`: manifests by tag or digest, tag freshness;
- :mod:`.blobs`: the shared blob fetch (resume, read-ahead, verify, commit);
- :mod:`.walk`: the one walk over what a manifest references;
- :mod:`.listing`: tag and catalog listing, merged and paged.

:class:`~dockerconnect.Resolver` (in ``_resolver.py``) validates each call
and delegates to these.
"""
