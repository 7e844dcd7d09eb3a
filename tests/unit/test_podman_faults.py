"""How the manager lives through podman's faults: transient failures retried, a bug raised (the
daemon exits non-zero on it), a podman that stops answering noticed by the probe, a cancelled
caller that leaves its start running, and warm execs checked before use. podman is a stand-in
here; tests/e2e/test_faults_podman.py does the same to the real one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest

from boxd import manager as manager_module
from boxd import podman
from boxd.config import from_mapping
from boxd.manager import BoxManager
from boxd.model import LABEL_MANAGED, LABEL_OWNER
from boxd.warm import WarmKey, WarmPool, _Entry, _Kind

LABELS = {LABEL_MANAGED: "true", LABEL_OWNER: "1000"}


class FakePodman:
    def __init__(self) -> None:
        self.status = "running"
        self.stream_failures: list[BaseException] = []
        self.subscribed = 0
        self.ping_error: BaseException | None = None
        self.started = asyncio.Event()

    @contextlib.asynccontextmanager
    async def event_stream(self, filters: Any = None):  # type: ignore[no-untyped-def]
        self.subscribed += 1
        if self.stream_failures:
            raise self.stream_failures.pop(0)

        async def forever():  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()
            yield {}

        yield forever()

    async def list_containers(self, labels: Any = None) -> list[dict[str, Any]]:
        return [{"Names": ["dev"], "Id": "the-id", "Image": "img", "State": self.status,
                 "Labels": dict(LABELS)}]

    async def inspect_container(self, name: str) -> dict[str, Any]:
        return {"Name": "dev", "Id": "the-id", "ImageName": "img",
                "State": {"Status": self.status}, "Config": {"Labels": dict(LABELS)}}

    async def ping(self, timeout: float | None = None) -> None:
        if self.ping_error is not None:
            raise self.ping_error

    async def start_container(self, name: str) -> None:
        self.status = "running"
        self.started.set()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(manager_module, "PROBE_INTERVAL", 0.01)
    fake = FakePodman()
    config = from_mapping({"state_dir": str(tmp_path), "warm_sessions": 0})
    return fake, BoxManager(config, fake)  # type: ignore[arg-type]


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (state the fakes change)
            await asyncio.sleep(0.005)


async def test_transient_failures_are_retried_until_podman_answers(setup):
    fake, manager = setup
    fake.stream_failures = [podman.PodmanUnavailable("refused"),
                            podman.PodmanUnavailable("lost podman during the event stream")]
    changes: list[bool] = []
    runner = asyncio.create_task(manager.run(changes.append))
    try:
        await until(lambda: manager.podman_up)
        assert fake.subscribed == 3 and changes == [True]
        assert manager.get("dev").state == "running"
    finally:
        runner.cancel()


async def test_anything_else_is_a_bug_and_ends_the_follower(setup):
    fake, manager = setup
    fake.stream_failures = [KeyError("a bug")]
    with pytest.raises(KeyError):
        await asyncio.wait_for(manager.run(), 5)


async def test_a_podman_that_stops_answering_is_lost_then_found(setup):
    fake, manager = setup
    changes: list[bool] = []
    runner = asyncio.create_task(manager.run(changes.append))
    try:
        await until(lambda: manager.podman_up)
        fake.ping_error = podman.PodmanUnavailable("podman did not answer in time")
        await until(lambda: not manager.podman_up)
        # boxd cannot know the box's state while podman says nothing.
        assert manager.get("dev").state == "unknown"
        fake.ping_error = None
        await until(lambda: manager.podman_up)
        assert manager.get("dev").state == "running"
        assert changes[:3] == [True, False, True]
    finally:
        runner.cancel()


async def test_a_cancelled_caller_leaves_its_start_running(setup, monkeypatch):
    fake, manager = setup
    fake.status = "exited"
    await manager.resync()
    manager._podman_up = True
    ready = asyncio.Event()

    async def await_ready(*args: Any, **kwargs: Any) -> str:
        await ready.wait()
        return "pipe"

    monkeypatch.setattr(manager_module.readiness, "await_ready", await_ready)
    monkeypatch.setattr(manager_module.readiness, "ReadyPipe",
                        lambda *args: contextlib.nullcontext())
    monkeypatch.setattr(manager, "_write_box_conf", lambda *args: None)
    monkeypatch.setattr(manager, "_owner_lookup", lambda uid: None)
    monkeypatch.setattr(manager_module, "held_groups", lambda *args: ())

    async def no_range(owner: Any) -> None:
        return None

    monkeypatch.setattr(manager, "_id_range", no_range)
    first = asyncio.create_task(manager.start("dev"))
    await asyncio.wait_for(fake.started.wait(), 5)
    first.cancel()  # ctrl-c, or the caller left the bus
    with pytest.raises(asyncio.CancelledError):
        await first
    assert manager.get("dev").state == "starting"
    second = asyncio.create_task(manager.start("dev"))  # joins the start under way
    await asyncio.sleep(0.01)
    assert not second.done()
    ready.set()
    assert (await asyncio.wait_for(second, 5)).state == "running"
    assert manager.get("dev").state == "running"
    assert manager._start_tasks == {}


class ExecPodman:
    def __init__(self, answer: dict[str, Any] | BaseException) -> None:
        self.answer = answer

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


async def _entry() -> tuple[_Entry, socket.socket]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return _Entry("exec-1", podman.ExecStream(b"", reader, writer)), theirs


@pytest.mark.parametrize("answer", [podman.NotFound(404, "no such exec session"),
                                    {"Running": False, "ExitCode": 137}])
async def test_a_warm_exec_podman_no_longer_runs_is_not_handed_out(answer):
    pool = WarmPool(ExecPodman(answer), "", size=1, idle_seconds=60)  # type: ignore[arg-type]
    key = WarmKey("dev", "1000:1000", False)
    entry, peer = await _entry()
    try:
        kind = _Kind(entries=[entry])
        kind.filler = asyncio.create_task(asyncio.sleep(0))  # no refill here
        pool._kinds[key] = kind
        assert await pool.take(key) is None
        assert key not in pool._kinds  # its siblings went with the same container
        assert entry.stream.writer.is_closing()
    finally:
        pool.close()
        peer.close()


async def test_a_running_warm_exec_is_handed_out():
    pool = WarmPool(ExecPodman({"Running": True}), "", size=1,  # type: ignore[arg-type]
                    idle_seconds=60)
    key = WarmKey("dev", "1000:1000", False)
    entry, peer = await _entry()
    try:
        kind = _Kind(entries=[entry])
        kind.filler = asyncio.create_task(asyncio.sleep(0))
        pool._kinds[key] = kind
        assert await pool.take(key) == ("exec-1", entry.stream)
    finally:
        pool.close()
        entry.stream.writer.close()
        peer.close()
