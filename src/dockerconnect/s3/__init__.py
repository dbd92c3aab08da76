"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph RGW).

Install with ``pip install 'dockerconnect[s3]'``.

See :class:`S3BlobStore` and the guide "Running several replicas".
"""

from dockerconnect.s3._store import MIN_PART_SIZE, S3BlobStore

__all__ = ["MIN_PART_SIZE", "S3BlobStore"]
