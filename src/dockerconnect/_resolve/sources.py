"""Asking the serving sources in order: the one loop every lookup goes through.

For each connector that serves the repository, in the resolver's order:
skip it if it recently said "not there" (a remembered miss), count the
request, ask it (within the stall limit), record a failure or remember a
miss, count a hit. A connector that is down (:mod:`.health`) is skipped without
I/O, as one that could not be asked. When nobody has the item, :meth:`Nobody.error` gives the
most informative error: "not found" when every connector answered, the one
connector's own ``UpstreamError`` when only one failed, else an
``UpstreamError`` naming each connector that could not be asked.

Absent is not failed (STYLE.md habit 2): a miss may be remembered, a failure
never is.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import attrs
import cachetools

from dockerconnect._digest import Digest
from dockerconnect._policy import CachingPolicy
from dockerconnect._protocols import Connector
from dockerconnect._resolve.health import ConnectorDown, Health, HealthPolicy
from dockerconnect._stats import ResolverStats
from dockerconnect.errors import (
    ConnectorCycle,
    DigestMismatch,
    DockerConnectError,
    NotFound,
    UpstreamError,
)

__all__ = ["Found", "Nobody", "Sources", "Stalled", "expect"]

log = logging.getLogger("dockerconnect.resolver")

T = TypeVar("T")
R = TypeVar("R")

#: Remembered misses, per resolver (least recently used are forgotten first).
NEGATIVE_CACHE_SIZE = 16384
#: Remembered sources of wrong bytes, per resolver.
SUSPECT_CACHE_SIZE = 1024


@attrs.frozen
class Found(Generic[T]):
    """``connector`` had the item: ``value``."""

    connector: Connector
    value: T


@attrs.frozen
class Nobody:
    """No source had the item. ``failures`` maps connectors that could not be asked."""

    owner: str
    failures: dict[str, BaseException]

    @property
    def real_failures(self) -> dict[str, BaseException]:
        """The failures that are not refused loops (a loop counts as a miss)."""
        return {k: v for k, v in self.failures.items() if not isinstance(v, ConnectorCycle)}

    def error(self, not_found: type[NotFound], what: str, **context: Any) -> DockerConnectError:
        """The most informative error for "nobody has ``what``"."""
        real = self.real_failures
        if not real:
            return not_found(f"{what} is not known to {self.owner!r} or its connectors", **context)
        if len(real) == 1:
            ((_name, only),) = real.items()
            if isinstance(only, UpstreamError):
                return only
        names = ", ".join(sorted(real))
        detail = {name: f"{type(e).__name__}: {e}" for name, e in real.items()}
        return UpstreamError(
            f"{what}: no source has it, and these connectors could not be asked: {names}",
            failures=real,
            connector=names,
            detail=detail,
            **context,
        )


def expect(connector: Connector, value: object, kind: type[T], what: str) -> T | None:
    """``value`` if it is ``None`` or a ``kind``; else ``UpstreamError`` naming the connector.

    A third-party connector is a plugin: what it hands over is checked
    before anything else touches it.
    """
    if value is None or isinstance(value, kind):
        return value
    raise UpstreamError(
        f"connector {connector.name!r} returned {type(value).__name__} from {what},"
        f" not {kind.__name__} or None",
        connector=connector.name,
    )


class Stalled(UpstreamError):
    """A connector stayed silent for longer than the resolver's stall limit.

    Unlike a broken transfer, a stalled one is not resumed from the same
    connector: the next one is asked.
    """


class Sources:
    """The connectors in order, with the resolver's misses, suspects and stall limit."""

    def __init__(
        self,
        owner: str,
        *,
        connectors: Callable[[], Sequence[Connector]],
        policy_for: Callable[[str | None], CachingPolicy],
        clock: Callable[[], float],
        stats: ResolverStats,
        stall_timeout: float,
        health: HealthPolicy | None,
    ) -> None:
        self.owner = owner
        self.health = Health(health, clock=clock, stats=stats)
        self._connectors = connectors
        self._policy_for = policy_for
        self._clock = clock
        self._stats = stats
        self.stall_timeout = stall_timeout
        self._negative: cachetools.LRUCache[tuple[str, str, str, str], float] = cachetools.LRUCache(
            NEGATIVE_CACHE_SIZE
        )
        self._suspect: cachetools.LRUCache[tuple[str, Digest], float] = cachetools.LRUCache(
            SUSPECT_CACHE_SIZE
        )

    # -- who to ask --------------------------------------------------------------

    def serving(self, repository: str) -> list[Connector]:
        """The connectors that serve ``repository``, in order."""
        out = []
        for connector in list(self._connectors()):
            try:
                if connector.serves(repository):
                    out.append(connector)
            except Exception:  # a faulty plugin must not break resolution
                log.exception("connector %r failed in serves()", getattr(connector, "name", "?"))
        return out

    def source_first(self, repository: str, source: str | None) -> list[Connector]:
        """The serving connectors, the one named ``source`` first."""
        serving = self.serving(repository)
        return [c for c in serving if c.name == source] + [c for c in serving if c.name != source]

    def for_blob(self, repository: str, digest: Digest) -> list[Connector]:
        """The connectors to ask for a blob: those that recently sent wrong bytes last.

        Asked last rather than not at all: the next source gets its chance
        first, and a sole upstream that has recovered is still reached.
        """
        now = self._clock()
        good: list[Connector] = []
        doubtful: list[Connector] = []
        for connector in self.serving(repository):
            until = self._suspect.get((connector.name, digest))
            (doubtful if until is not None and now < until else good).append(connector)
        return good + doubtful

    def suspect(self, connector: Connector, digest: Digest) -> None:
        """``connector`` sent wrong bytes for ``digest``: ask it last for a while."""
        policy = self._policy_for(connector.name)
        self._suspect[(connector.name, digest)] = policy.suspect_until(self._clock())

    # -- misses ------------------------------------------------------------------

    def remembered_miss(self, connector: Connector, kind: str, repository: str, ref: str) -> bool:
        key = (connector.name, kind, repository, ref)
        expiry = self._negative.get(key)
        if expiry is None:
            return False
        if self._clock() < expiry:
            self._stats.negative_hits += 1
            return True
        self._negative.pop(key, None)
        return False

    def remember_miss(self, connector: Connector, kind: str, repository: str, ref: str) -> None:
        self._stats.miss(connector.name)
        expiry = self._policy_for(connector.name).negative_expiry(self._clock())
        if expiry is not None:
            self._negative[(connector.name, kind, repository, ref)] = expiry

    # -- asking ------------------------------------------------------------------

    def failed(self, connector: Connector, exc: BaseException, what: str) -> BaseException:
        """Record that ``connector`` could not be asked for ``what``; return ``exc``."""
        if isinstance(exc, ConnectorCycle):
            self._stats.cycles_refused += 1
            log.info("connector %r refused a loop while resolving %s", connector.name, what)
            return exc
        if isinstance(exc, ConnectorDown):
            log.debug("connector %r is down: not asked for %s", connector.name, what)
            return exc
        wrong = isinstance(exc, DigestMismatch)
        self._stats.failure(connector.name, wrong_bytes=wrong)
        if wrong:
            digest = getattr(exc, "digest", None)
            self._stats.emit(
                "verified_bad",
                connector=connector.name,
                digest=digest if isinstance(digest, Digest) else None,
                detail=what,
            )
            log.warning("connector %r sent content that does not match %s", connector.name, what)
        elif isinstance(exc, DockerConnectError):
            log.warning("connector %r could not be asked for %s: %s", connector.name, what, exc)
        else:
            log.error(
                "connector %r raised an unexpected error for %s", connector.name, what, exc_info=exc
            )
        return exc

    def stalled(self, connector: Connector, what: str, *, trickle: str | None = None) -> Stalled:
        """The error for a connector silent (or trickling) for longer than the stall limit."""
        self._stats.stalls[connector.name] += 1
        how = f"sent only {trickle}" if trickle else f"sent nothing for {self.stall_timeout:g} s"
        return Stalled(
            f"connector {connector.name!r} {how} while asked for {what}",
            connector=connector.name,
        )

    async def call(
        self, connector: Connector, request: str, what: str, fn: Callable[[], Awaitable[T]]
    ) -> T:
        """Count one request of kind ``request`` and make it within the stall limit."""
        name = connector.name
        self.health.admit(name)  # ConnectorDown, without I/O, while it is down
        self._stats.request(name, request)
        settled = False
        started = time.perf_counter()
        try:
            with anyio.move_on_after(self.stall_timeout):
                result = await fn()
                settled = True
            if not settled:
                raise self.stalled(connector, what)
        except ConnectorCycle:
            settled = True  # a refused loop says nothing about the connector's health
            raise
        except Exception as exc:
            settled = True
            self._stats.answered(name, request, "error", time.perf_counter() - started)
            self.health.failed(name, exc)
            raise
        finally:
            if not settled:  # cancelled: a probe in flight gives its turn back
                self.health.abandoned(name)
        outcome = "miss" if result is None else "hit"
        self._stats.answered(name, request, outcome, time.perf_counter() - started)
        self.health.succeeded(name)
        return result

    async def first(
        self,
        order: Sequence[Connector],
        *,
        kind: str,
        request: str,
        repository: str,
        ref: str,
        ask: Callable[[Connector], Awaitable[T | None]],
    ) -> Found[T] | Nobody:
        """Ask each connector of ``order`` in turn; the first that has the item wins."""
        return await self.first_then(
            order, kind=kind, request=request, repository=repository, ref=ref, ask=ask, use=_as_is
        )

    async def first_then(
        self,
        order: Sequence[Connector],
        *,
        kind: str,
        request: str,
        repository: str,
        ref: str,
        ask: Callable[[Connector], Awaitable[T | None]],
        use: Callable[[Connector, T], Awaitable[R | None]],
        fatal: Callable[[BaseException], bool] | None = None,
    ) -> Found[R] | Nobody:
        """Ask each connector of ``order`` in turn; the first that has the item wins.

        ``ask`` makes the request (counted as ``request``, within the stall
        limit); ``use`` takes a found answer further (a transfer, a second
        request) and may itself say "not there" (``None``) or fail.
        Misses are remembered under ``(kind, repository, ref)``. A failure
        for which ``fatal`` is true ends the loop by raising it.
        """
        failures: dict[str, BaseException] = {}
        what = f"{repository}@{ref}" if ":" in ref else f"{repository}:{ref}"
        for connector in order:
            if self.remembered_miss(connector, kind, repository, ref):
                continue
            try:
                asked = await self.call(connector, request, what, functools.partial(ask, connector))
            except Exception as exc:
                failures[connector.name] = self.failed(connector, exc, what)
                continue
            try:
                answer = None if asked is None else await use(connector, asked)
            except Exception as exc:
                if not isinstance(exc, ConnectorCycle):
                    self.health.failed(connector.name, exc)
                failures[connector.name] = self.failed(connector, exc, what)
                if fatal is not None and fatal(exc):
                    raise
                continue
            if answer is None:
                self.remember_miss(connector, kind, repository, ref)
                continue
            self._stats.hit(connector.name)
            return Found(connector, answer)
        return Nobody(self.owner, failures)


async def _as_is(connector: Connector, value: T) -> T:
    return value
