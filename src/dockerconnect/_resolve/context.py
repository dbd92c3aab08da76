"""What every room of a resolver shares: name, sources, tasks, counters, clock, policy, usage."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from dockerconnect._policy import CachingPolicy
from dockerconnect._resolve.retention import UsageMarks
from dockerconnect._resolve.sources import Sources
from dockerconnect._resolve.tasks import Tasks
from dockerconnect._stats import ResolverStats

__all__ = ["Context"]


@attrs.frozen
class Context:
    """The resolver's shared parts, handed to each room it delegates to.

    ``clock`` and ``policy_for`` are the resolver's own, so an embedder that
    changes ``clock``, ``policy`` or ``overrides`` at run time is seen by
    every room at once.
    """

    owner: str
    sources: Sources
    tasks: Tasks
    stats: ResolverStats
    clock: Callable[[], float]
    policy_for: Callable[[str | None], CachingPolicy]
    #: Where content's origin and use are recorded (a no-op without usage logs).
    usage: UsageMarks = attrs.field(factory=UsageMarks)
