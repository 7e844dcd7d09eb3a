"""boxctl's side of a session: hand boxd this terminal's fds, keep the window size and signals in
step, restore the terminal on every way out, and return the command's own exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
from typing import Any

from dbus_next import Variant

from boxd.client import BoxdClient

# The caller environment a command in a box should see (the rest comes from the box itself).
PASSED_ENV = {"TERM", "COLORTERM", "LANG", "LANGUAGE", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY",
              "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK", "PULSE_SERVER", "COLUMNS", "LINES",
              "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "VTE_VERSION", "DESKTOP_SESSION",
              "KRB5CCNAME", "NO_COLOR", "EDITOR", "VISUAL", "PAGER"}
PASSED_PREFIXES = ("LC_", "XDG_")


def caller_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k in PASSED_ENV or k.startswith(PASSED_PREFIXES)}


def _open_fds() -> list[int]:
    fds = []
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.fstat(fd)
            fds.append(fd)
    return fds


def _window_size() -> tuple[int, int]:
    import fcntl
    import termios

    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


async def run_in_box(client: BoxdClient, name: str, command: list[str], allow_tty: bool) -> int:
    fds = _open_fds()
    use_tty = allow_tty and 0 in fds and 1 in fds and os.isatty(0) and os.isatty(1)
    try:
        cwd = os.getcwdb()
    except OSError:
        cwd = b"/"
    options: dict[str, Any] = {"tty": Variant("b", use_tty)}
    if not command:
        options["shell"] = Variant("b", True)
    body = [cwd, [a.encode("utf-8", "surrogateescape") for a in command],
            {target: index for index, target in enumerate(fds)}, caller_env(), options]

    saved_tty = None
    if use_tty:
        import termios
        import tty

        saved_tty = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)  # keep what the user typed ahead
    loop = asyncio.get_running_loop()
    session_path = ""
    pending: set[asyncio.Task[Any]] = set()

    def later(coro: Any) -> None:
        task = loop.create_task(coro)
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        session_path = (await client.box(name, "Spawn", "ayaaya{uh}a{ss}a{sv}", body,
                                         unix_fds=fds))[0]

        def forward(signum: int) -> None:
            later(client.call(session_path, "io.github.boxd1.Session", "Signal", "i", [signum]))

        def resize() -> None:
            with contextlib.suppress(OSError):
                rows, cols = _window_size()
                later(client.call(session_path, "io.github.boxd1.Session", "Resize", "uu",
                                  [rows, cols]))

        # In a terminal, ctrl-c travels as a byte to the box's own terminal; otherwise it is
        # boxctl that gets SIGINT and passes it on.
        forwarded = [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
        if not use_tty:
            forwarded.append(signal.SIGINT)
        for signum in forwarded:
            loop.add_signal_handler(signum, forward, signum)
        if use_tty:
            loop.add_signal_handler(signal.SIGWINCH, resize)
        status = (await client.call(session_path, "io.github.boxd1.Session", "Wait"))[0]
        return int(status)
    finally:
        if saved_tty is not None:
            import termios

            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSAFLUSH, saved_tty)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT,
                       signal.SIGWINCH):
            loop.remove_signal_handler(signum)
        sys.stdout.flush()
