"""The registry HTTP API v2 as a connector: :class:`HttpConnector`.

Speaks the OCI distribution-spec (and Docker Hub's conventions) to any
registry over httpx: anonymous, basic and bearer-token auth, retries with
backoff honouring ``Retry-After``, resumed and verified blob downloads,
redirects to object storage without credentials, tag and catalog listing.
"""

from dockerconnect.http._auth import Credentials
from dockerconnect.http._client import Limits
from dockerconnect.http._connector import DOCKER_HUB_URL, HttpConnector
from dockerconnect.http._listing import ListingBounds
from dockerconnect.http._retry import RateLimit, Retry

__all__ = [
    "DOCKER_HUB_URL",
    "Credentials",
    "HttpConnector",
    "Limits",
    "ListingBounds",
    "RateLimit",
    "Retry",
]
