"""Events a :class:`~dockerconnect.Resolver` tells its observers about.

An observer is anything with ``on_event(event)``; the resolver calls it
synchronously, on the event loop's thread, as the thing happens. It must not
block (hand the event to a queue, a log or a counter); an exception it raises
is logged (``dockerconnect.events``) and swallowed, so an observer never
breaks a pull. Observers are held per resolver (``r.observers``, a list the
embedder may change at run time).

The kinds, each with the fields it fills in:

- ``fetched``: content arrived whole and verified from ``connector``
  (``repository``, ``digest``, ``size``; ``item`` is ``"blob"`` or ``"manifest"``).
- ``cached``: that content is now held here (same fields).
- ``served``: content was served from this registry's own stores.
- ``stale_served``: a tag was served past its freshness because no upstream
  could confirm it (``repository``, ``digest``, ``detail`` the tag).
- ``verified_bad``: ``connector`` sent bytes that do not match their digest.
- ``health_changed``: ``connector`` moved to the state in ``detail``
  (``up``, ``down``, ``probing``).
- ``pruned``: retention removed cached content (``item``, ``digest``,
  ``size``; ``repository`` for a manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

import attrs

from dockerconnect._digest import Digest

__all__ = ["EVENT_KINDS", "Event", "EventKind", "Observer", "notify"]

log = logging.getLogger("dockerconnect.events")

EventKind = Literal[
    "fetched", "cached", "served", "stale_served", "verified_bad", "health_changed", "pruned"
]
EVENT_KINDS: tuple[EventKind, ...] = (
    "fetched",
    "cached",
    "served",
    "stale_served",
    "verified_bad",
    "health_changed",
    "pruned",
)


@attrs.frozen(slots=True)
class Event:
    """One thing that happened; see the module docs for what each kind fills in.

    ``at`` is the resolver's clock when it happened.
    """

    kind: EventKind
    at: float
    connector: str | None = None
    repository: str | None = None
    digest: Digest | None = None
    size: int | None = None
    item: Literal["blob", "manifest"] | None = None
    detail: str | None = None


@runtime_checkable
class Observer(Protocol):
    """Told of every :class:`Event`; must not block, and should not raise."""

    def on_event(self, event: Event) -> None: ...


def notify(observers: Iterable[Observer], event: Event) -> None:
    """Hand ``event`` to each observer; one that raises is logged and skipped."""
    for observer in list(observers):
        try:
            observer.on_event(event)
        except Exception:
            log.exception("observer %r failed on a %s event", observer, event.kind)
