"""A watch on the event loop: every caller of the daemon waits whenever something holds the loop,
so a stall is logged (`loop_stall`, a warning, with how long and the longest so far). Tests and
bench/ read those log lines; nothing of it is on the bus."""

from __future__ import annotations

import asyncio

from boxd import log

TICK = 0.025
STALL = 0.050

_log = log.get("boxd.loop")


class LoopWatch:
    def __init__(self, tick: float = TICK, stall: float = STALL) -> None:
        self.tick = tick
        self.stall = stall
        self.longest = 0.0  # seconds the loop was late, at most, since start
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.tick
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self._due
        if late > self.longest:
            self.longest = late
        if late > self.stall:
            _log.warning("loop_stall", stall_ms=round(late * 1000, 1),
                         longest_ms=round(self.longest * 1000, 1))
        self._due = now + self.tick
        self._handle = loop.call_at(self._due, self._tick)
