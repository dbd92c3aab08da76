"""``ConnectorConformance``: the tests every :class:`~dockerconnect.Connector` passes.

Subclass it in a test module and override the one fixture,
``connector_factory``: an async callable ``(repository, images)`` that
returns a connector whose upstream holds exactly ``images`` (tag → image or
index) in ``repository``, and which the connector serves::

    class TestMyConnector(ConnectorConformance):
        @pytest.fixture
        def connector_factory(self) -> ConnectorFactory:
            async def make(repository, images):
                for tag, content in images.items():
                    await seed(repository, tag, content)
                return MyConnector(...)
            return make

Closing the connectors it made is the factory's business (e.g. an async
generator fixture that closes them after the test). Every test runs under
``pytest.mark.anyio``, so on every backend the ``anyio_backend`` fixture
names.

After each test, once the factory fixture has been torn down (and so has
closed what it made), the suite fails the test if anything the test started
is still there: tasks still running, file descriptors still open (files,
sockets, pipes; Linux ``/proc`` only), and whatever
:meth:`~ConnectorConformance.connector_leftovers` reports for each connector
made (override it to look inside your own connector, e.g. at responses not
returned to a pool).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

import anyio
import pytest

from dockerconnect._digest import Digest
from dockerconnect._protocols import Connector
from dockerconnect.errors import InvalidInput
from dockerconnect.testing._images import RandomImage, RandomIndex, random_image, random_index

__all__ = ["ConnectorConformance", "ConnectorFactory"]

ConnectorFactory = Callable[[str, Mapping[str, "RandomImage | RandomIndex"]], Awaitable[Connector]]

_ABSENT_DIGEST = Digest.from_bytes(b"dockerconnect: content that no upstream holds")


def _repository() -> str:
    # Unique per test, so one long-lived upstream can serve many tests.
    return f"conformance/r{uuid.uuid4().hex[:12]}"


def _open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each leads to (Linux only)."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        return {}
    held: dict[int, str] = {}
    for name in os.listdir(fds):
        try:
            held[int(name)] = os.readlink(os.path.join(fds, name))
        except OSError:
            continue  # the descriptor listdir itself used, or one closed meanwhile
    return held


def _coro_name(task: anyio.TaskInfo) -> str:
    return getattr(task.coro, "__qualname__", type(task.coro).__name__)


def _is_runner_plumbing(task: anyio.TaskInfo) -> bool:
    # The pytest plugin runs each fixture step and test through a short-lived
    # task of its own (anyio's runner); that one is not the connector's.
    return _coro_name(task).endswith("_call_in_runner_task")


class _Baseline:
    """What was running and open when the test got its ``connect`` fixture."""

    def __init__(self) -> None:
        self.tasks: set[int] | None = None
        self.fds: dict[int, str] = {}
        self.connectors: list[Connector] = []

    def take(self) -> None:
        self.tasks = {task.id for task in anyio.get_running_tasks()}
        self.fds = _open_fds()

    async def leftovers(self) -> list[str]:
        """New tasks and descriptors, after letting finishing tasks finish."""
        assert self.tasks is not None
        new_tasks: list[str] = []
        # Bounded: a task that is closing gets a few scheduling rounds to end.
        for _ in range(50):
            new_tasks = [
                f"task {task.name!r} ({_coro_name(task)})"
                for task in anyio.get_running_tasks()
                if task.id not in self.tasks and not _is_runner_plumbing(task)
            ]
            if not new_tasks:
                break
            await anyio.sleep(0.01)
        now = _open_fds()
        new_fds = [
            f"fd {fd}: {target}" for fd, target in sorted(now.items()) if self.fds.get(fd) != target
        ]
        return new_tasks + new_fds


def _image(seed: int) -> RandomImage:
    # Layers of a few hundred KiB: several chunks per blob on any transport.
    return random_image(layers=2, layer_size=[300_000, 5_000], seed=seed, layer_format="raw")


class ConnectorConformance:
    """Base test class: override ``connector_factory``; the tests come with it."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def connector_factory(self) -> ConnectorFactory:
        """Override: return ``async (repository, images) -> Connector``."""
        pytest.fail(f"{type(self).__name__} must override the connector_factory fixture")

    def connector_leftovers(self, connector: Connector) -> Iterable[object]:
        """Override: whatever ``connector`` left behind after a test (open
        responses, spooled files); anything returned fails the test."""
        return ()

    @pytest.fixture(autouse=True)
    async def _no_leftovers(self) -> AsyncIterator[_Baseline]:
        # Autouse, so set up before the factory fixture and torn down after it:
        # the check sees what is left once the factory has closed its connectors.
        baseline = _Baseline()
        yield baseline
        if baseline.tasks is None:
            return  # the test never asked for a connector
        leftovers = await baseline.leftovers()
        for connector in baseline.connectors:
            leftovers.extend(repr(item) for item in self.connector_leftovers(connector))
        assert not leftovers, f"the connector left behind: {leftovers!r}"

    @pytest.fixture
    async def connect(
        self, connector_factory: ConnectorFactory, _no_leftovers: _Baseline
    ) -> ConnectorFactory:
        """``connector_factory``, with what the test starts watched for leaks."""
        _no_leftovers.take()

        async def make(
            repository: str, images: Mapping[str, RandomImage | RandomIndex]
        ) -> Connector:
            connector = await connector_factory(repository, images)
            _no_leftovers.connectors.append(connector)
            return connector

        return make

    async def test_serves_the_repository(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(1)})
        assert isinstance(connector.name, str)
        assert connector.name
        assert connector.serves(repository)

    async def test_get_manifest_by_tag(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(2)
        connector = await connect(repository, {"v1": image})
        manifest = await connector.get_manifest(repository, "v1")
        assert manifest is not None
        assert manifest.data == image.manifest.data
        assert manifest.digest == image.manifest.digest
        assert manifest.media_type == image.manifest.media_type

    async def test_get_manifest_by_digest(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(3)
        connector = await connect(repository, {"v1": image})
        manifest = await connector.get_manifest(repository, str(image.manifest.digest))
        assert manifest is not None
        assert manifest.data == image.manifest.data
        assert manifest.digest == image.manifest.digest

    async def test_head_manifest(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(4)
        connector = await connect(repository, {"v1": image})
        expected = image.manifest.descriptor()
        for reference in ("v1", str(image.manifest.digest)):
            found = await connector.head_manifest(repository, reference)
            assert found is not None
            assert (found.digest, found.size, found.media_type) == (
                expected.digest,
                expected.size,
                expected.media_type,
            )

    async def test_missing_manifest_is_none(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(5)})
        assert await connector.get_manifest(repository, "no-such-tag") is None
        assert await connector.head_manifest(repository, "no-such-tag") is None
        assert await connector.get_manifest(repository, str(_ABSENT_DIGEST)) is None
        assert await connector.head_manifest(repository, str(_ABSENT_DIGEST)) is None

    async def test_missing_repository_is_none(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(6)})
        other = _repository()
        if not connector.serves(other):
            pytest.skip("the connector does not serve a second repository")
        assert await connector.get_manifest(other, "v1") is None
        assert await connector.stat_blob(other, _ABSENT_DIGEST) is None

    async def test_missing_blob_is_none(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(7)})
        assert await connector.stat_blob(repository, _ABSENT_DIGEST) is None
        assert await connector.open_blob(repository, _ABSENT_DIGEST) is None

    async def test_stat_blob(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(8)
        connector = await connect(repository, {"v1": image})
        for digest, data in image.blobs.items():
            found = await connector.stat_blob(repository, digest)
            assert found is not None
            assert found.digest == digest
            assert found.size == len(data)

    async def test_open_blob_from_start(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(9)
        connector = await connect(repository, {"v1": image})
        for digest, data in image.blobs.items():
            stream = await connector.open_blob(repository, digest)
            assert stream is not None
            async with stream:
                assert stream.digest == digest
                assert stream.size == len(data)
                assert stream.offset == 0
                assert stream.source == connector.name
                assert await stream.read() == data

    async def test_open_blob_from_offset(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(10)
        connector = await connect(repository, {"v1": image})
        digest, data = max(image.blobs.items(), key=lambda item: len(item[1]))
        for offset in (1, len(data) // 3, len(data) - 1):
            stream = await connector.open_blob(repository, digest, offset=offset)
            assert stream is not None
            async with stream:
                assert stream.size == len(data)
                assert stream.offset == offset
                assert stream.source == connector.name
                assert await stream.read() == data[offset:]

    async def test_blob_stream_closes_unread(self, connect: ConnectorFactory) -> None:
        repository, image = _repository(), _image(11)
        connector = await connect(repository, {"v1": image})
        digest = next(iter(image.blobs))
        stream = await connector.open_blob(repository, digest)
        assert stream is not None
        await stream.aclose()
        await stream.aclose()

    async def test_index_and_children(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        index = random_index(seed=12, layer_size=2048)
        connector = await connect(repository, {"multi": index})
        top = await connector.get_manifest(repository, "multi")
        assert top is not None
        assert top.data == index.manifest.data
        assert top.is_index
        for child in index.children:
            manifest = await connector.get_manifest(repository, str(child.manifest.digest))
            assert manifest is not None
            assert manifest.data == child.manifest.data
            for digest, data in child.blobs.items():
                stream = await connector.open_blob(repository, digest)
                assert stream is not None
                assert await stream.read() == data

    async def test_tags(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        images = {"b": _image(13), "a": _image(14), "1.0": _image(15)}
        connector = await connect(repository, images)
        tags = await connector.tags(repository)
        assert tags is None or tags == sorted(images)

    async def test_repositories(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(16)})
        names = await connector.repositories()
        if names is not None:
            assert repository in names
            assert names == sorted(set(names))

    async def test_invalid_input_is_refused(self, connect: ConnectorFactory) -> None:
        repository = _repository()
        connector = await connect(repository, {"v1": _image(17)})
        with pytest.raises(InvalidInput):
            await connector.get_manifest("Not/Valid", "v1")
        with pytest.raises(InvalidInput):
            await connector.get_manifest(repository, "-bad-tag")
        with pytest.raises(InvalidInput):
            await connector.get_manifest(repository, "sha256:short")
        with pytest.raises(InvalidInput):
            await connector.head_manifest("../escape", "v1")
