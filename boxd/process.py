"""Processes in boxes, pinned with pidfds, so that boxd's signals reach them and nothing else.

A pid read from podman names whatever process has that number when it is used: had the process
ended and its number been reused, kill(pid) would hit a stranger, with root's rights. boxd pins a
process with a pidfd as soon as it learns the pid, checks that the pinned process is the one it
meant (it lives in the box's container: its cgroup names the container, or it shares the
container's mount namespace), and from then on signals and waits only through the pidfd, which
can never name another process. Knows /proc and podman's exec inspection; nothing about sessions
or D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from typing import Any

from boxd import log, podman

_log = log.get("boxd.process")


class PinnedProcess:
    """One process, held by a pidfd. Signals to it after it ended do nothing (never another
    process's), and closing it is idempotent."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._fd: int | None = pidfd
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def pin(cls, pid: int, *, container_id: str, init_pid: int = 0) -> PinnedProcess | None:
        """Pin `pid` if it is a live process of the container `container_id` (whose first
        process is `init_pid`, when known); None if it is gone or is not that container's."""
        if pid <= 1:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # ESRCH: gone already
            return None
        process = cls(pid, fd)
        # Checked through /proc/PID after the pidfd exists: as long as the pidfd's process has
        # not exited (checked last), /proc/PID is that same process.
        if not _in_container(pid, container_id, init_pid) or process.exited():
            process.close()
            return None
        return process

    @classmethod
    def open(cls, pid: int) -> PinnedProcess | None:
        """Pin `pid` unchecked, for a pid the caller has just learnt from podman and checks
        with podman again once pinned; None if it is gone. (Needs no /proc, which the unit's
        sandbox may hide.)"""
        if pid <= 1:
            return None
        try:
            return cls(pid, os.pidfd_open(pid))
        except ProcessLookupError:  # gone already; other errors (EMFILE) are the caller's
            return None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def exited(self) -> bool:
        if self._fd is None:
            return True
        return _readable(self._fd)

    def signal(self, signum: int) -> bool:
        """Send `signum`; False if the process is gone (or this pin closed)."""
        if self._fd is None:
            return False
        try:
            signal.pidfd_send_signal(self._fd, signum)
        except ProcessLookupError:
            return False
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the process ends (True), or `timeout` seconds pass (False)."""
        if self.exited():
            return True
        assert self._fd is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        if len(self._waiters) == 1:
            loop.add_reader(self._fd, self._wake)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
            return True
        except TimeoutError:
            return False
        finally:
            self._drop_waiter(future)

    async def hang_up(self, grace: float = 3.0) -> None:
        """SIGHUP, and SIGKILL if the process has not ended `grace` seconds later."""
        if not self.signal(signal.SIGHUP):
            return
        if not await self.wait(grace):
            _log.info("process_killed_after_hangup", pid=self.pid, grace=grace)
            self.signal(signal.SIGKILL)

    def signal_group(self, signum: int) -> bool:
        """Signal the process, and its process group if it leads one; False if it is gone.
        Only while it lives: its pid, and so its group id, cannot be reused until it is
        reaped."""
        if self.exited():
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signum)
                return True
        return self.signal(signum)

    async def hang_up_group(self, grace: float) -> str:
        """End it as a closing terminal does: SIGHUP to it and its group, SIGKILL if still
        there after `grace`. Returns "gone" (it was), "hung up" or "killed"."""
        if not self.signal_group(signal.SIGHUP):
            return "gone"
        if await self.wait(grace):
            return "hung up"
        self.signal_group(signal.SIGKILL)
        await self.wait(5)
        return "killed"

    def children(self) -> list[PinnedProcess]:
        """Its live children, each pinned and checked to be its child."""
        if self._fd is None:
            return []
        pids: set[int] = set()
        try:
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{task}/children") as listing:
                    pids.update(int(p) for p in listing.read().split())
        except OSError:
            return []
        found = []
        for pid in sorted(pids):
            try:
                child = PinnedProcess(pid, os.pidfd_open(pid))
            except OSError:
                continue
            # Its parent is this live, pinned process: then it is really our child, and while
            # it has not exited (checked last) /proc/PID is that child.
            if _parent(pid) == self.pid and not self.exited() and not child.exited():
                found.append(child)
            else:
                child.close()
        return found

    def kill_tree(self, limit: int = 4096) -> int:
        """SIGKILL it and its descendants (up to `limit`). Each is stopped as it is found, so
        none forks away meanwhile. Returns how many were signalled."""
        tree, index = [self], 0
        while index < len(tree) and len(tree) < limit:
            tree[index].signal(signal.SIGSTOP)
            tree.extend(tree[index].children())
            index += 1
        killed = sum(1 for process in tree if process.signal(signal.SIGKILL))
        for process in tree[1:]:
            process.close()
        return killed

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._waiters:
            asyncio.get_running_loop().remove_reader(fd)
            for future in self._waiters:
                if not future.done():
                    future.set_result(None)
            self._waiters.clear()
        os.close(fd)

    def _wake(self) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_result(None)

    def _drop_waiter(self, future: asyncio.Future[None]) -> None:
        if future in self._waiters:
            self._waiters.remove(future)
            if not self._waiters and self._fd is not None:
                asyncio.get_running_loop().remove_reader(self._fd)


async def pin_exec(client: podman.PodmanClient, exec_id: str) -> PinnedProcess | None:
    """Pin the process of a running podman exec; None if it has ended or cannot be told apart
    from a stranger."""
    try:
        info = await _running_exec(client, exec_id)
        if info is None:
            return None
        pid, container_id = int(info.get("Pid") or 0), str(info.get("ContainerID") or "")
        if not container_id:
            return None
        process = PinnedProcess.pin(pid, container_id=container_id)
        if process is None and pid > 1:
            # No cgroup of its own (cgroups disabled, rootless on cgroup v1): compare the mount
            # namespace with the container's first process.
            state = (await client.inspect_container(container_id)).get("State") or {}
            process = PinnedProcess.pin(pid, container_id=container_id,
                                        init_pid=int(state.get("Pid") or 0))
    except (podman.PodmanError, OSError, ValueError, TypeError):
        return None
    if process is None and os.path.exists(f"/proc/{pid}"):
        # (A process that ended before it could be pinned needs no word: nothing to signal.)
        _log.warning("process_not_pinned", exec_id=exec_id, pid=pid,
                     why="the pid podman gave is not a process of the box")
    return process


async def _running_exec(client: podman.PodmanClient, exec_id: str, timeout: float = 5.0
                        ) -> dict[str, Any] | None:
    """The exec's inspection once podman books it running; None once it has ended. (The
    hijacked stream can be up a moment before podman records the exec as running.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        info = await client.exec_inspect(exec_id)
        if info.get("Running"):
            return info
        if info.get("Pid") or loop.time() >= deadline:
            return None  # it ran and ended, or it never started
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _readable(fd: int) -> bool:
    """A pidfd is readable once its process has exited. (poll: fds past 1024 are fine.)"""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _in_container(pid: int, container_id: str, init_pid: int) -> bool:
    if not container_id:
        return False
    try:
        with open(f"/proc/{pid}/cgroup") as cgroups:
            if container_id in cgroups.read():
                return True
        if init_pid <= 1:
            return False
        init_fd = os.pidfd_open(init_pid)  # held across the check: /proc/INIT stays that one
        try:
            ours = os.stat(f"/proc/{pid}/ns/mnt")
            theirs = os.stat(f"/proc/{init_pid}/ns/mnt")
            if _readable(init_fd):
                return False  # the container's first process ended meanwhile
        finally:
            os.close(init_fd)
        return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)
    except OSError:
        return False
