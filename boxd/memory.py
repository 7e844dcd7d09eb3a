"""Giving memory back to the system after load.

Sessions pump their output through buffers of up to a few MiB each. glibc's malloc keeps what
Python frees in its heap for reuse, and after a burst of sessions the holes between the few objects
that live on are never returned on their own: the daemon stayed at 100 MB and more of resident
memory with under 10 MB of it in use. `malloc_trim(0)` hands every free page of every arena back
to the kernel; boxd calls it once a burst of sessions is over (debounced: a quiet moment after the
last session was collected, and at least every MAX_DELAY seconds while sessions keep ending).
Where the C library has no malloc_trim (musl), all this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable

from boxd import log

_log = log.get("boxd.memory")

# Trim this long after the last session ended, unless another ends meanwhile...
QUIET_SECONDS = 2.0
# ...but no later than this after the first of a burst, when they keep ending.
MAX_DELAY_SECONDS = 30.0
# mallopt's M_ARENA_MAX: boxd's few threads (file I/O off the event loop) share two arenas instead
# of getting one each, up to eight per core, each with free memory of its own.
_M_ARENA_MAX = -8
ARENA_MAX = 2


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


_libc = _load_libc()


def available() -> bool:
    """Whether this C library can give free heap memory back (glibc)."""
    return _libc is not None


def configure() -> None:
    """Called once at start, before any thread: cap malloc's arenas."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, ARENA_MAX)


def rss_kib() -> int:
    """This process's resident memory (0 where /proc does not say)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def trim() -> None:
    """Return free heap memory to the kernel now."""
    if _libc is None:
        return
    before = rss_kib()
    started = time.monotonic()
    _libc.malloc_trim(0)
    _log.debug("memory_trimmed", rss_before_kib=before, rss_after_kib=rss_kib(),
               duration_ms=round((time.monotonic() - started) * 1000, 1))


class Trimmer:
    """Debounces trims: trim_soon() after each session's end, one trim after the burst."""

    def __init__(self, quiet: float = QUIET_SECONDS, max_delay: float = MAX_DELAY_SECONDS,
                 action: Callable[[], None] = trim) -> None:
        self._quiet = quiet
        self._max_delay = max_delay
        self._action = action
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._first = 0.0  # when the pending trim was first asked for

    def trim_soon(self) -> None:
        if self._action is trim and _libc is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing to debounce with, and no burst to wait for
            return
        if self._loop is not loop:  # a new loop (tests): the old one's timer is gone with it
            self._loop, self._handle = loop, None
        now = loop.time()
        if self._handle is None:
            self._first = now
        else:
            self._handle.cancel()
        when = min(now + self._quiet, self._first + self._max_delay)
        self._handle = loop.call_at(when, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = None
        try:
            self._action()
        except Exception:  # giving memory back is an optimisation: never a reason to fail
            _log.exception("memory_trim_failed")


_default = Trimmer()


def trim_soon() -> None:
    """Trim once the current burst of work is over (see Trimmer)."""
    _default.trim_soon()
