"""The caching policy: pure decisions over (record, now), no I/O.

The :class:`~dockerconnect.Resolver` asks these functions what to do and
matches on the answer exhaustively (``assert_never``); the clock is
injected, so every rule is testable without sleeping. Every time rule lives
here: tag freshness, serving stale, how long a miss is remembered, how long
a source that sent wrong bytes is asked last, and how long a connector's
catalog is reused.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import attrs

from dockerconnect._descriptor import Descriptor, Platform
from dockerconnect._protocols import TagRecord
from dockerconnect.errors import InvalidInput

__all__ = ["CachingPolicy", "StaleDecision", "TagDecision"]


class TagDecision(enum.Enum):
    """What to do with a tag record we hold."""

    #: Serve it as it is: pushed here, or confirmed within ``tag_ttl``.
    FRESH = "fresh"
    #: Ask the upstreams whether it still points where it did (HEAD, compare digest).
    REVALIDATE = "revalidate"


class StaleDecision(enum.Enum):
    """What to do with an expired tag when every upstream failed."""

    #: Serve the old answer: within ``stale_if_error`` past its expiry.
    SERVE_STALE = "serve-stale"
    #: Too old to serve: report the upstream failure.
    FAIL = "fail"


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{attribute.name} must be a non-negative number of seconds")


def _platforms(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    platforms = tuple(value)
    for platform in platforms:
        Platform.parse(platform)  # InvalidInput now, not when eager caching runs
    return platforms


@attrs.frozen(slots=True)
class CachingPolicy:
    """How a :class:`~dockerconnect.Resolver` caches what it gets through a connector.

    - ``cache_manifests``: store manifests (and the tags that named them).
    - ``cache_blobs``: store blobs as they stream through on demand.
    - ``eager``: when a manifest comes from a connector, cache in the
      background every blob it references and, for an index, its children
      (all, or those matching ``platforms``) with their blobs.
    - ``platforms``: strings such as ``"linux/arm64/v8"``; ``None`` means all.
    - ``tag_ttl``: seconds a tag cached from a connector is served without asking.
    - ``negative_ttl``: seconds a connector's "not there" is remembered.
    - ``stale_if_error``: seconds past its expiry an expired tag is still served
      when every upstream fails (``math.inf``: always; ``0``: never).
    - ``max_blob_size``: larger blobs stream through without being cached.
    - ``pin_on_push``: a pushed manifest's content that exists only behind a
      connector is copied here before the push completes, so it never dangles.
    - ``listing_ttl``: seconds a connector's catalog (``repositories()``) is
      reused, so paging through a merged catalog asks each connector once.
    - ``referrers_ttl``: seconds a connector's referrers of a digest are
      served without asking it again (``0``: always ask). An expired answer
      is served for up to ``stale_if_error`` more seconds when the connector
      cannot be asked, as a tag is.
    - ``eager_referrers``: with ``eager``, also cache each eagerly cached
      manifest's referrers (signatures, SBOMs, attestations) and their blobs.
      It needs ``eager``: alone it is refused with ``InvalidInput``.
    """

    cache_manifests: bool = True
    cache_blobs: bool = True
    eager: bool = False
    platforms: tuple[str, ...] | None = attrs.field(default=None, converter=_platforms)
    tag_ttl: float = attrs.field(default=300.0, validator=_non_negative)
    negative_ttl: float = attrs.field(default=30.0, validator=_non_negative)
    stale_if_error: float = attrs.field(default=math.inf, validator=_non_negative)
    max_blob_size: int | None = None
    pin_on_push: bool = False
    listing_ttl: float = attrs.field(default=30.0, validator=_non_negative)
    referrers_ttl: float = attrs.field(default=300.0, validator=_non_negative)
    eager_referrers: bool = attrs.field(default=False)

    @eager_referrers.validator
    def _needs_eager(self, attribute: attrs.Attribute[bool], value: bool) -> None:
        if value and not self.eager:
            raise InvalidInput(
                "eager_referrers=True caches referrers alongside eager caching: set eager=True too"
            )

    def tag_decision(self, record: TagRecord, now: float) -> TagDecision:
        """Fresh while pushed here or confirmed less than ``tag_ttl`` ago."""
        if record.local or now < record.confirmed_at + self.tag_ttl:
            return TagDecision.FRESH
        return TagDecision.REVALIDATE

    def stale_decision(self, record: TagRecord, now: float) -> StaleDecision:
        """Whether an expired tag may still be served when every upstream failed."""
        expired_at = record.confirmed_at + self.tag_ttl
        if now <= expired_at + self.stale_if_error:
            return StaleDecision.SERVE_STALE
        return StaleDecision.FAIL

    def negative_expiry(self, now: float) -> float | None:
        """Until when a miss is remembered; ``None`` when misses are not remembered."""
        if self.negative_ttl <= 0:
            return None
        return now + self.negative_ttl

    def suspect_until(self, now: float) -> float:
        """Until when a source that sent wrong bytes for a digest is asked last for it."""
        return now + max(self.negative_ttl, 1.0)

    def listing_expiry(self, now: float) -> float | None:
        """Until when a connector's catalog is reused; ``None``: ask every time."""
        if self.listing_ttl <= 0:
            return None
        return now + self.listing_ttl

    def referrers_decision(self, fetched_at: float, now: float) -> TagDecision:
        """Whether a connector's referrers answer from ``fetched_at`` is still fresh."""
        if now < fetched_at + self.referrers_ttl:
            return TagDecision.FRESH
        return TagDecision.REVALIDATE

    def referrers_stale_decision(self, fetched_at: float, now: float) -> StaleDecision:
        """Whether an expired referrers answer may be served when its connector failed."""
        if now <= fetched_at + self.referrers_ttl + self.stale_if_error:
            return StaleDecision.SERVE_STALE
        return StaleDecision.FAIL

    def caches_blob(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes fetched through a connector is stored."""
        return self.cache_blobs and (self.max_blob_size is None or size <= self.max_blob_size)

    def wants_child(self, child: Descriptor) -> bool:
        """Whether eager caching of an index includes this child."""
        if self.platforms is None or child.platform is None:
            return True
        return any(child.platform.matches(Platform.parse(p)) for p in self.platforms)
