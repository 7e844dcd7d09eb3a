"""Blocking calls off the event loop, in bounded lanes.

Some calls block with no bound boxd controls: NSS lookups (pwd, grp: LDAP, SSSD) and file system
calls on paths a user names (realpath, stat on an NFS or autofs mount). On the event loop, one such
path would stall every user's call. Each kind runs in a lane: a few threads of its own, a short
line of callers waiting for one, a deadline for the whole call. A full lane refuses at once
(Busy) rather than queueing without bound, and a call past its deadline answers Timeout; its
thread cannot be interrupted, so it keeps its place in the lane until the call returns, and a
path that hangs for ever uses up that lane (only), which then refuses.

The threads are daemon threads: a hung one never holds up the daemon's exit.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from boxd import errors, log

_log = log.get("boxd.offloop")
T = TypeVar("T")


class Lane:
    def __init__(self, name: str, threads: int, waiting: int, timeout: float) -> None:
        self.name = name
        self.threads = threads
        self.waiting = waiting
        self.timeout = timeout
        self._busy = 0  # threads running calls (changed on the loop's thread only)
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> int:
        return self._busy

    async def run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) in one of the lane's threads. `what` completes "... did not answer in
        time" and "too many ... at once"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._take_thread(loop, what)
                done: asyncio.Future[T] = loop.create_future()
                threading.Thread(target=self._call, args=(loop, done, fn, args),
                                 name=f"boxd-{self.name}", daemon=True).start()
                try:
                    return await asyncio.shield(done)
                except BaseException:
                    done.cancel()  # nobody waits for its outcome any more
                    raise
        except TimeoutError:
            _log.warning("offloop_timeout", lane=self.name, what=what, timeout=self.timeout)
            raise errors.Timeout(f"{what} did not answer within {self.timeout:g} s") from None

    async def _take_thread(self, loop: asyncio.AbstractEventLoop, what: str) -> None:
        if self._busy < self.threads and not self._queue:
            self._busy += 1
            return
        if len(self._queue) >= self.waiting:
            _log.warning("offloop_full", lane=self.name, what=what, busy=self._busy)
            raise errors.Busy(f"too many {what} at once; try again in a moment")
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        try:
            await turn  # a finishing thread hands its place over (_finished)
        except BaseException:
            if turn in self._queue:
                self._queue.remove(turn)
            elif turn.done() and not turn.cancelled():
                self._finished()  # handed over just as we gave up: pass it on
            raise

    def _call(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[T],
              fn: Callable[..., T], args: tuple[object, ...]) -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting caller
            error = exc

        def finish() -> None:
            if not done.done():
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(result)  # type: ignore[arg-type]
            self._finished()

        try:
            loop.call_soon_threadsafe(finish)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _finished(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)  # its thread place now
                return
        self._busy -= 1


# NSS lookups (pwd, grp): LDAP or SSSD can take long when their server is away.
NSS = Lane("nss", threads=2, waiting=64, timeout=10.0)
# File system calls on paths callers name (volume sources, homes).
FS = Lane("fs", threads=4, waiting=64, timeout=5.0)
