"""Retry policy and the rate-limit headers registries send."""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Mapping

import attrs

from dockerconnect.errors import InvalidInput

__all__ = ["RETRY_STATUSES", "RateLimit", "Retry", "parse_retry_after"]

#: Statuses that say "try again later" rather than "no": rate limiting and
#: the gateway / overload family.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@attrs.frozen(slots=True)
class Retry:
    """How an :class:`~dockerconnect.http.HttpConnector` retries one request.

    Connect errors, timeouts, dropped connections and the statuses 429, 502,
    503 and 504 are retried, up to ``attempts`` tries in all and never past
    ``deadline`` seconds after the first. Between tries it waits an
    exponential backoff (``backoff * 2**(try - 1)``, capped at
    ``max_backoff``) with "equal jitter" (a random half of it), or what the
    server's ``Retry-After`` asks for. A ``Retry-After`` longer than
    ``max_retry_after`` or than the time left gives up at once, so the
    resolver can move on to another source instead of waiting.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    deadline: float = 60.0
    max_retry_after: float = 60.0

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidInput("Retry.attempts must be at least 1")
        if min(self.backoff, self.max_backoff, self.deadline, self.max_retry_after) < 0:
            raise InvalidInput("Retry times must not be negative")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The backoff before try ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 section 10.2.3).

    Either delay-seconds or an HTTP-date; ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


# ASCII digits, and few enough for int(): "²" is a \d, and int() refuses 4,300 digits.
_QUOTA = re.compile(r"\s*([0-9]{1,18})\s*(?:;\s*w\s*=\s*([0-9]{1,18}))?", re.ASCII)


@attrs.frozen(slots=True)
class RateLimit:
    """What the upstream last said about its rate limit.

    From ``RateLimit-Limit`` / ``RateLimit-Remaining`` (``100;w=21600``: 100
    requests per 21600 seconds, as Docker Hub sends them) and
    ``Docker-RateLimit-Source``. ``observed_at`` is wall-clock seconds.
    """

    limit: int | None
    remaining: int | None
    window: int | None
    source: str | None
    observed_at: float

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], now: float) -> RateLimit | None:
        """The rate limit the headers describe, or ``None`` if they say nothing."""
        limit_h = headers.get("ratelimit-limit")
        remaining_h = headers.get("ratelimit-remaining")
        if limit_h is None and remaining_h is None:
            return None
        limit, window = _quota(limit_h)
        remaining, window2 = _quota(remaining_h)
        return cls(limit, remaining, window or window2, headers.get("docker-ratelimit-source"), now)


def _quota(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    match = _QUOTA.match(value)
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None
