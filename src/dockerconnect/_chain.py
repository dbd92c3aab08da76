"""The chain of registries a request has passed through, for loop detection.

Each request carries, in a context variable, the identities of the registries
it is being resolved by, outermost first. A ``RegistryConnector`` refuses to
call into a registry already on the chain (``ConnectorCycle``), so a loop of
connectors is met once and refused instead of followed forever. Background
work (shared fetches) copies the chain of the request that started it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "Work",
    "current_chain",
    "entered",
    "set_current_work",
    "waiting_for",
    "would_deadlock",
]

_chain: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "dockerconnect_chain", default=()
)


def current_chain() -> tuple[int, ...]:
    """The identities of the registries the current request passed through."""
    return _chain.get()


@contextmanager
def entered(registry: object) -> Iterator[tuple[int, ...]]:
    """Put ``registry`` on the chain for the duration of the block."""
    chain = _chain.get()
    ident = id(registry)
    if chain and chain[-1] == ident:
        yield chain
        return
    token = _chain.set((*chain, ident))
    try:
        yield _chain.get()
    finally:
        _chain.reset(token)


class Work:
    """Background work other requests may wait on (a shared fetch).

    ``waiting_on`` is the work this one is waiting for right now, if any: the
    edges of a wait-for graph in which a cycle means a deadlock.
    """

    waiting_on: Work | None = None


_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar(
    "dockerconnect_work", default=None
)


def set_current_work(work: Work | None) -> None:
    """Mark the running background task as doing ``work``."""
    _work.set(work)


def would_deadlock(target: Work) -> bool:
    """Whether waiting for ``target`` from the current task closes a wait cycle.

    Connectors can lead one shared fetch into another registry's shared fetch;
    two registries that connect to each other could then each wait for the
    other. Following ``waiting_on`` from ``target`` back to the current work
    finds such a cycle before it forms.
    """
    me = _work.get()
    if me is None:
        return False
    node: Work | None = target
    for _ in range(10_000):
        if node is None:
            return False
        if node is me:
            return True
        node = node.waiting_on
    return True


@contextmanager
def waiting_for(target: Work) -> Iterator[None]:
    """Record that the current work waits for ``target`` during the block."""
    me = _work.get()
    if me is None:
        yield
        return
    previous, me.waiting_on = me.waiting_on, target
    try:
        yield
    finally:
        me.waiting_on = previous
