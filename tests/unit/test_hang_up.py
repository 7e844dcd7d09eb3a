"""Ending sessions: what kind of exec podman reports, and hanging up a process group the way a
closed terminal does, with SIGKILL for what does not listen (real processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

from boxd.sessions import TRAMPOLINE, exec_kind, hang_up_process
from boxd.warm import LAUNCHER


def _inspect(*arguments: str) -> dict[str, object]:
    return {"ProcessConfig": {"entrypoint": "/bin/sh", "arguments": list(arguments)}}


def test_exec_kinds_come_from_the_name_boxd_runs_its_shells_under() -> None:
    assert exec_kind(_inspect("-c", TRAMPOLINE, "boxd-spawn", "/", "", "--", "true")) == "session"
    assert exec_kind(_inspect("-c", LAUNCHER, "boxd-warm", "boxd-warm-0123")) == "warm"
    assert exec_kind(_inspect("-c", "ls", "boxd-spawn-not")) == "other"
    assert exec_kind(_inspect("ls", "-l")) == "other"
    assert exec_kind({"ProcessConfig": None}) == "other"
    assert exec_kind({}) == "other"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group(script: str) -> tuple[subprocess.Popen[bytes], int]:
    """A shell leading a session of its own (as an exec does) with a child in its group;
    returns it and the child's pid, once both run."""
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    return proc, child


def test_a_hang_up_ends_the_process_and_its_group() -> None:
    proc, child = _group("sleep 1000 & echo $!; wait")
    how = asyncio.run(hang_up_process(proc.pid, 10))
    assert how == "hung up"
    assert proc.wait(10) == -1  # died of SIGHUP (1)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_what_ignores_the_hang_up_is_killed_after_the_grace() -> None:
    proc, child = _group("trap '' HUP; sleep 1000 & echo $!; wait")
    started = time.monotonic()
    how = asyncio.run(hang_up_process(proc.pid, 0.5))
    assert how == "killed"
    assert time.monotonic() - started >= 0.5
    assert proc.wait(10) == -9
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def test_a_process_already_gone_is_left_alone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert asyncio.run(hang_up_process(proc.pid, 1)) == "gone"
    assert asyncio.run(hang_up_process(os.getpid() + 10_000_000, 1)) == "gone"


class _FakePodman:
    """Just what finding and ending a box's execs asks podman: its execs are real processes."""

    def __init__(self, execs: dict[str, tuple[subprocess.Popen[bytes], str]]) -> None:
        self.execs = execs

    async def inspect_container(self, name: str) -> dict[str, object]:
        return {"ExecIDs": [*self.execs, "removed-meanwhile"]}

    async def exec_inspect(self, exec_id: str) -> dict[str, object]:
        from boxd import podman

        if exec_id not in self.execs:
            raise podman.NotFound(404, "no such exec")
        proc, name = self.execs[exec_id]
        return {"Running": proc.poll() is None, "Pid": proc.pid, "ExitCode": proc.returncode,
                "ProcessConfig": {"arguments": ["-c", "script", name], "tty": False}}

    async def wait_exec_ended(self, exec_id: str, timeout: float = 15.0) -> dict[str, object]:
        proc, _ = self.execs[exec_id]
        await asyncio.to_thread(proc.wait, timeout)
        return await self.exec_inspect(exec_id)


def test_a_new_boxd_ends_the_sessions_and_launchers_it_did_not_start() -> None:
    from boxd.sessions import SessionManager, running_execs

    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "1000"], start_new_session=True)

    execs = {"spawned": (sleeper(), "boxd-spawn"), "warm": (sleeper(), "boxd-warm"),
             "someone's": (sleeper(), "bash")}
    client = _FakePodman(execs)

    async def scenario() -> tuple[list[str], int, int, int]:
        manager = SessionManager(client, max_per_user=64)  # type: ignore[arg-type]
        kinds = sorted(e.kind for e in await running_execs(client, "box"))  # type: ignore[arg-type]
        found = await manager.end_leftovers({"box": 2101}, grace=5)
        counted = manager.count(2101)  # until they are gone, they are their owner's
        await asyncio.gather(*manager._ending)
        return kinds, found, counted, manager.count(2101)

    try:
        kinds, found, counted, after = asyncio.run(scenario())
        assert kinds == ["other", "session", "warm"]
        assert (found, counted, after) == (2, 2, 0)
        assert execs["spawned"][0].wait(10) == -1 and execs["warm"][0].wait(10) == -1
        assert execs["someone's"][0].poll() is None  # not boxd's: left alone
    finally:
        for proc, _ in execs.values():
            proc.kill()
            proc.wait()
