"""PinnedProcess: signals go to the pinned process through its pidfd, never to a reused pid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from boxd.process import PinnedProcess

IGNORES_HUP = ("import signal, sys, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
               "print('ready', flush=True); time.sleep(120)")


def _child(code: str = "import time; print('ready', flush=True); time.sleep(120)"
           ) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def _shell(script: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def _pin(child: subprocess.Popen[bytes]) -> PinnedProcess:
    # The test's "container" is our own mount namespace: the child shares it.
    process = PinnedProcess.pin(child.pid, container_id="not-in-any-cgroup",
                                init_pid=os.getpid())
    assert process is not None
    return process


async def test_signals_reach_the_pinned_process() -> None:
    child = _child()
    process = _pin(child)
    try:
        assert not process.exited()
        assert process.signal(signal.SIGTERM)
        assert await process.wait(30)
        assert child.wait(30) == -signal.SIGTERM
    finally:
        process.close()


async def test_a_pid_that_is_not_the_containers_is_not_pinned() -> None:
    child = _child()
    try:
        assert PinnedProcess.pin(child.pid, container_id="no-such-container") is None
        assert PinnedProcess.pin(child.pid, container_id="") is None
        # A container's id shows in its processes' cgroup paths.
        line = Path(f"/proc/{child.pid}/cgroup").read_text().splitlines()[0]
        process = PinnedProcess.pin(child.pid, container_id=line)
        assert process is not None
        process.close()
    finally:
        child.kill()
        child.wait()
    assert PinnedProcess.pin(child.pid, container_id=line) is None  # gone
    assert PinnedProcess.pin(1, container_id=line) is None
    assert PinnedProcess.pin(0, container_id=line) is None


async def test_after_the_process_ended_nothing_else_can_be_hit() -> None:
    child = _child()
    process = _pin(child)
    child.kill()
    child.wait()  # reaped: its pid is free for reuse
    assert process.exited()
    assert process.signal(signal.SIGKILL) is False  # ESRCH from the pidfd, not a stranger
    assert await process.wait(0.1)
    process.close()
    process.close()  # idempotent
    assert process.signal(signal.SIGKILL) is False


async def test_hang_up_ends_a_process_that_listens_with_sighup_only() -> None:
    child = _child()
    process = _pin(child)
    try:
        await process.hang_up(grace=30)
        assert child.wait(30) == -signal.SIGHUP
    finally:
        process.close()


async def test_hang_up_kills_a_process_that_ignores_sighup_after_the_grace() -> None:
    child = _child(IGNORES_HUP)
    process = _pin(child)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await process.hang_up(grace=0.5)
        assert loop.time() - started >= 0.5
        assert child.wait(30) == -signal.SIGKILL
    finally:
        process.close()


async def test_closing_wakes_a_waiter() -> None:
    child = _child()
    process = _pin(child)
    try:
        waiter = asyncio.create_task(process.wait(60))
        await asyncio.sleep(0.05)
        process.close()
        assert await asyncio.wait_for(waiter, 10) is True
    finally:
        child.kill()
        child.wait()


async def test_kill_tree_takes_the_children_with_it() -> None:
    # A shell with a forked child (not exec'd): killing the shell alone would leave it behind.
    child = _shell("sleep 123 & sleep 124 & echo ready; wait")
    process = _pin(child)
    try:
        grandchildren = process.children()
        assert len(grandchildren) == 2
        pids = [g.pid for g in grandchildren]
        for g in grandchildren:
            g.close()
        assert process.kill_tree() == 3
        assert child.wait(30) == -signal.SIGKILL
        for pid in pids:
            for _ in range(300):
                if not Path(f"/proc/{pid}").exists() or \
                        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"{pid} still runs")
    finally:
        process.close()
        if child.poll() is None:
            child.kill()
            child.wait()
