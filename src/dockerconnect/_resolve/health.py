"""Connector health: skip what is down, without waiting for it.

A pure state machine over the resolver's clock, after Envoy's outlier
detection: a connector whose requests failed (``UpstreamError``, not a miss)
``failures`` times in a row is *down* and skipped without any I/O until
``retry_at``; then one request probes it (*probing*): success makes it *up*,
failure makes it *down* again for twice as long, up to ``max_open_for``.
Requests skipped while a connector is down count as "could not ask", so
stale tags are served and the next connector is asked.

::

    up --(failures in a row)--> down --(retry_at passed)--> probing
    probing --(success)--> up
    probing --(failure)--> down (open_for doubled, at most max_open_for)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import attrs

from dockerconnect._stats import ResolverStats
from dockerconnect.errors import InvalidInput, UpstreamError

__all__ = ["ConnectorDown", "ConnectorHealth", "Health", "HealthPolicy"]

log = logging.getLogger("dockerconnect.resolver")

State = Literal["up", "down", "probing"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"HealthPolicy.{attribute.name} must be a positive number")


@attrs.frozen(slots=True)
class HealthPolicy:
    """When a connector counts as down, and for how long it is skipped.

    - ``failures``: failed requests in a row that make a connector *down*.
    - ``open_for``: seconds it is first skipped for.
    - ``max_open_for``: the longest it is skipped for, however often the
      probe fails (each failed probe doubles the time).
    """

    failures: int = attrs.field(default=3, validator=_positive)
    open_for: float = attrs.field(default=10.0, validator=_positive)
    max_open_for: float = attrs.field(default=600.0, validator=_positive)


@attrs.frozen(slots=True)
class ConnectorHealth:
    """What the resolver knows of one connector's health.

    ``state`` is ``"up"``, ``"down"`` (skipped until ``retry_at``) or
    ``"probing"`` (one request is finding out); ``failures`` counts failed
    requests in a row; ``last_error`` describes the latest failure.
    """

    state: State
    failures: int
    retry_at: float | None
    last_error: str | None


class ConnectorDown(UpstreamError):
    """A connector skipped without I/O because it is down (see :class:`HealthPolicy`)."""


@attrs.define
class _Entry:
    state: State = "up"
    failures: int = 0
    open_for: float = 0.0
    retry_at: float | None = None
    last_error: str | None = None


class Health:
    """The health of each connector, by name."""

    def __init__(
        self, policy: HealthPolicy | None, *, clock: Callable[[], float], stats: ResolverStats
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._stats = stats
        self._entries: dict[str, _Entry] = {}

    def view(self, name: str) -> ConnectorHealth:
        entry = self._entries.get(name, _Entry())
        return ConnectorHealth(entry.state, entry.failures, entry.retry_at, entry.last_error)

    def admit(self, name: str) -> None:
        """Let a request to ``name`` through, or raise :class:`ConnectorDown`."""
        entry = self._entries.get(name)
        if self.policy is None or entry is None or entry.state == "up":
            return
        now = self._clock()
        if entry.state == "down" and entry.retry_at is not None and now >= entry.retry_at:
            self._move(name, entry, "probing")
            return
        self._stats.health_skips[name] += 1
        raise ConnectorDown(
            f"connector {name!r} is {entry.state} after {entry.failures} failures"
            f" (last: {entry.last_error}); skipped without asking",
            connector=name,
        )

    def succeeded(self, name: str) -> None:
        """A request to ``name`` was answered (a miss is an answer too)."""
        entry = self._entries.get(name)
        if entry is None:
            return
        if entry.state != "up":
            self._move(name, entry, "up")
        del self._entries[name]

    def failed(self, name: str, error: BaseException) -> None:
        """A request to ``name`` could not be answered."""
        if self.policy is None:
            return
        entry = self._entries.setdefault(name, _Entry())
        entry.failures += 1
        entry.last_error = f"{type(error).__name__}: {error}"
        if entry.state == "probing":
            entry.open_for = min(entry.open_for * 2, self.policy.max_open_for)
        elif entry.state == "up" and entry.failures >= self.policy.failures:
            entry.open_for = min(self.policy.open_for, self.policy.max_open_for)
        else:
            return
        entry.retry_at = self._clock() + entry.open_for
        self._move(name, entry, "down")

    def abandoned(self, name: str) -> None:
        """A probe ended without an answer (cancelled): let the next request probe."""
        entry = self._entries.get(name)
        if entry is not None and entry.state == "probing":
            entry.retry_at = self._clock()
            self._move(name, entry, "down")

    def _move(self, name: str, entry: _Entry, state: State) -> None:
        if entry.state == state:
            return
        log.warning(
            "connector %r is now %s (was %s; %d failures in a row%s)",
            name,
            state,
            entry.state,
            entry.failures,
            f", retry at {entry.retry_at:.3f}" if state == "down" else "",
        )
        entry.state = state
        self._stats.health_changed(name, state)
