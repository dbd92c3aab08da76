"""Connector health: a failing connector is skipped without I/O, then probed once."""

from __future__ import annotations

import anyio
import pytest
from _resolve_helpers import Clock, make_resolver

from dockerconnect import CachingPolicy, ConnectorHealth, Event, HealthPolicy
from dockerconnect.errors import InvalidInput, ManifestUnknown, UpstreamError
from dockerconnect.testing import CountingConnector, FakeUpstream, random_image

pytestmark = pytest.mark.anyio


async def _fail(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except UpstreamError as exc:
        return exc
    raise AssertionError("expected an UpstreamError")


async def test_down_after_failures_in_a_row_and_skipped_without_io() -> None:
    hub = FakeUpstream("hub")
    hub.add("app", random_image(seed=1), tag="v1")
    counted = CountingConnector(hub)
    clock = Clock()
    async with make_resolver(counted, clock=clock, health=HealthPolicy(failures=3)) as r:
        assert r.health["hub"] == ConnectorHealth("up", 0, None, None)
        hub.faults.fail = True
        for _ in range(3):
            await _fail(r.get_manifest("app", "v1"))
        assert counted.calls["get_manifest"] == 3
        health = r.health["hub"]
        assert health.state == "down" and health.failures == 3
        assert health.retry_at == clock.now + 10.0
        assert health.last_error is not None and "down" in health.last_error
        # Down: skipped without any I/O, and reported as could-not-ask.
        hub.faults.fail = False
        error = await _fail(r.get_manifest("app", "v1"))
        assert not isinstance(error, ManifestUnknown)
        await _fail(r.stat_blob("app", random_image(seed=1).manifest.layers[0].digest))
        assert counted.total == 3
        assert r.stats.health_skips["hub"] == 2
        assert r.stats.health_changes[("hub", "down")] == 1


async def test_probe_after_retry_at_success_makes_it_up() -> None:
    hub = FakeUpstream("hub")
    image = random_image(seed=2)
    hub.add("app", image, tag="v1")
    counted = CountingConnector(hub)
    clock = Clock()
    async with make_resolver(counted, clock=clock, health=HealthPolicy(failures=1)) as r:
        hub.faults.fail = True
        await _fail(r.get_manifest("app", "v1"))
        hub.faults.fail = False
        clock.advance(9.9)
        await _fail(r.get_manifest("app", "v1"))
        assert counted.calls["get_manifest"] == 1
        clock.advance(0.1)
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert r.health["hub"] == ConnectorHealth("up", 0, None, None)
        assert r.stats.health_changes[("hub", "probing")] == 1
        assert r.stats.health_changes[("hub", "up")] == 1


async def test_failed_probe_doubles_the_wait_up_to_max_open_for() -> None:
    hub = FakeUpstream("hub")
    hub.faults.fail = True
    counted = CountingConnector(hub)
    clock = Clock()
    policy = HealthPolicy(failures=1, open_for=10.0, max_open_for=35.0)
    async with make_resolver(counted, clock=clock, health=policy) as r:
        await _fail(r.get_manifest("app", "v1"))
        waits = []
        for _ in range(4):
            health = r.health["hub"]
            assert health.state == "down" and health.retry_at is not None
            waits.append(health.retry_at - clock.now)
            clock.advance(waits[-1])
            await _fail(r.get_manifest("app", "v1"))  # the probe, failing
        assert waits == [10.0, 20.0, 35.0, 35.0]
        assert counted.calls["get_manifest"] == 5


async def test_one_probe_at_a_time() -> None:
    hub = FakeUpstream("hub")
    image = random_image(seed=3)
    hub.add("app", image, tag="v1")
    counted = CountingConnector(hub)
    clock = Clock()
    async with make_resolver(counted, clock=clock, health=HealthPolicy(failures=1)) as r:
        hub.faults.fail = True
        await _fail(r.get_manifest("app", "v1"))
        hub.faults.fail = False
        clock.advance(10)
        gate = anyio.Event()
        original = hub.stat_blob

        async def slow_stat(repository: str, digest: object) -> object:
            await gate.wait()
            return await original(repository, digest)  # type: ignore[arg-type]

        hub.stat_blob = slow_stat  # type: ignore[method-assign,assignment]
        layer = image.manifest.layers[0].digest
        results: list[object] = []

        async def probe() -> None:
            results.append(await r.stat_blob("app", layer))

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert r.health["hub"].state == "probing"
            # While the probe is out, other requests are not sent.
            await _fail(r.get_manifest("app", "v1"))
            gate.set()
        assert r.health["hub"].state == "up"
        assert counted.calls["stat_blob"] == 1 and counted.calls["get_manifest"] == 1


async def test_down_connector_lets_stale_tags_serve_and_the_next_connector_answer() -> None:
    first, second = FakeUpstream("first"), FakeUpstream("second")
    image = random_image(seed=4)
    first.add("app", image, tag="v1")
    second.add("other", random_image(seed=5), tag="v1")
    clock = Clock()
    policy = CachingPolicy(tag_ttl=1)
    async with make_resolver(
        first, second, clock=clock, policy=policy, health=HealthPolicy(failures=1)
    ) as r:
        await r.get_manifest("app", "v1")
        first.faults.fail = True
        await _fail(r.get_manifest("app", "missing"))  # first fails: now down
        assert r.health["first"].state == "down"
        clock.advance(2)  # the tag expired; revalidation finds first down
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert r.stats.stale_serves == 1
        assert (await r.get_manifest("other", "v1")).digest == random_image(seed=5).manifest.digest


async def test_a_miss_is_an_answer_and_health_off_never_skips() -> None:
    hub = FakeUpstream("hub")
    counted = CountingConnector(hub)
    async with make_resolver(counted, health=HealthPolicy(failures=1)) as r:
        for reference in ("a", "b", "c"):
            with pytest.raises(ManifestUnknown):
                await r.get_manifest("app", reference)
        assert r.health["hub"].state == "up"
    hub.faults.fail = True
    async with make_resolver(counted, health=None) as r:
        for _ in range(5):
            await _fail(r.get_manifest("app", "v1"))
        assert r.health["hub"] == ConnectorHealth("up", 0, None, None)
    assert counted.calls["get_manifest"] == 3 + 5


async def test_health_lists_every_current_connector() -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    async with make_resolver(a) as r:
        assert set(r.health) == {"a"}
        r.connectors.append(b)
        assert set(r.health) == {"a", "b"}


@pytest.mark.parametrize(
    "kwargs", [{"failures": 0}, {"open_for": -1}, {"max_open_for": 0}, {"failures": True}]
)
def test_health_policy_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        HealthPolicy(**kwargs)  # type: ignore[arg-type]


async def test_a_whole_cycle_is_told_to_observers_and_costs_no_request_while_down() -> None:
    hub = FakeUpstream("hub")
    image = random_image(seed=9)
    hub.add("app", image, tag="v1")
    counted = CountingConnector(hub)
    clock = Clock()
    changes: list[tuple[str | None, str | None, float]] = []

    class Changes:
        def on_event(self, event: Event) -> None:
            if event.kind == "health_changed":
                changes.append((event.connector, event.detail, event.at))

    policy = HealthPolicy(failures=2, open_for=10.0)
    async with make_resolver(counted, clock=clock, health=policy, observers=[Changes()]) as r:
        hub.faults.fail = True
        await _fail(r.get_manifest("app", "v1"))
        await _fail(r.get_manifest("app", "v1"))  # up -> down for 10 s
        start = clock.now
        for _ in range(5):
            await _fail(r.get_manifest("app", "v1"))  # skipped: no request
        assert counted.calls["get_manifest"] == 2
        clock.advance(10)
        await _fail(r.get_manifest("app", "v1"))  # probing, fails: down for 20 s
        assert r.health["hub"].retry_at == clock.now + 20.0
        clock.advance(19.9)
        await _fail(r.get_manifest("app", "v1"))
        assert counted.calls["get_manifest"] == 3
        hub.faults.fail = False
        clock.advance(0.1)
        assert (await r.get_manifest("app", "v1")).digest == image.manifest.digest
        assert counted.calls["get_manifest"] == 4
    assert [(c, s) for c, s, _ in changes] == [
        ("hub", "down"),
        ("hub", "probing"),
        ("hub", "down"),
        ("hub", "probing"),
        ("hub", "up"),
    ]
    assert [at - start for _, _, at in changes] == [0.0, 10.0, 10.0, 30.0, 30.0]
