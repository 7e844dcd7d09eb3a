"""boxctl's side of a session: hand boxd this terminal's fds, keep the window size and signals in
step, restore the terminal on every way out, and return the command's own exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
from typing import Any

from boxd.client import SESSION, BoxdClient, CallError
from boxd.paths import BUS_NAME

# The caller environment a command in a box should see (the rest comes from the box itself).
PASSED_ENV = {"TERM", "COLORTERM", "LANG", "LANGUAGE", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY",
              "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK", "PULSE_SERVER", "COLUMNS", "LINES",
              "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "VTE_VERSION", "DESKTOP_SESSION",
              "KRB5CCNAME", "NO_COLOR", "EDITOR", "VISUAL", "PAGER",
              # What Toolbx also passes: shell history settings, KDE's and xterm's own.
              "HISTCONTROL", "HISTFILE", "HISTFILESIZE", "HISTIGNORE", "HISTSIZE",
              "HISTTIMEFORMAT", "KDE_FULL_SESSION", "KDE_SESSION_VERSION", "XTERM_VERSION",
              "XAUTHLOCALHOSTNAME"}
PASSED_PREFIXES = ("LC_", "XDG_", "KONSOLE_")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# A session ends with this status when boxd goes away under it: hung up, as by a closed terminal.
GONE_STATUS = 128 + signal.SIGHUP
GONE_LINE = ("boxctl: boxd went away; the session was ended (hint: boxd hangs up what is left "
             "of it when it starts again)")


class BoxdGone(Exception):
    """boxd left the bus (killed, crashed, restarted) while a session ran."""


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


class _Forwarder:
    """Signal handlers that pass signals and window changes on to the session. Until the session
    exists they are only noted; afterwards the main thread only ever waits for Wait's answer,
    so a handler may send on the connection without interleaving with another send."""

    def __init__(self, client: BoxdClient) -> None:
        self._client = client
        self._path = ""
        self._pending: list[tuple[str, str, tuple[Any, ...]]] = []

    def attach(self, path: str) -> None:
        self._path = path
        pending, self._pending = self._pending, []
        for member, signature, body in pending:
            self._send(member, signature, body)

    def _send(self, member: str, signature: str, body: tuple[Any, ...]) -> None:
        if not self._path:
            self._pending.append((member, signature, body))
            return
        with contextlib.suppress(OSError):
            self._client.send_only(self._path, SESSION, member, signature, body)

    def on_signal(self, signum: int, _frame: Any) -> None:
        self._send("Signal", "i", (signum,))

    def on_winch(self, _signum: int, _frame: Any) -> None:
        with contextlib.suppress(OSError):
            self._send("Resize", "uu", _window_size())


def _watch_boxd(client: BoxdClient) -> None:
    """Have the bus tell us when boxd's name loses its owner. Not waited for: the bus handles
    our messages in order, so the match holds before the Spawn that follows is delivered."""
    from jeepney import MessageFlag
    from jeepney.bus_messages import MatchRule, message_bus

    rule = MatchRule(type="signal", sender="org.freedesktop.DBus",
                     interface="org.freedesktop.DBus", member="NameOwnerChanged",
                     path="/org/freedesktop/DBus")
    rule.add_arg_condition(0, BUS_NAME)
    msg = message_bus.AddMatch(rule)
    msg.header.flags |= MessageFlag.no_reply_expected
    client.connection.send(msg)


def _wait_for_exit(client: BoxdClient, serial: int) -> int:
    """The answer to Wait (the command's exit status), or BoxdGone as soon as boxd leaves."""
    from jeepney import HeaderFields, MessageType

    while True:
        try:
            msg = client.connection.receive()
        except (OSError, EOFError) as exc:
            raise BoxdGone() from exc  # the bus itself went away
        fields = msg.header.fields
        kind = msg.header.message_type
        if kind == MessageType.signal:
            if (fields.get(HeaderFields.member) == "NameOwnerChanged"
                    and fields.get(HeaderFields.sender) == "org.freedesktop.DBus"
                    and len(msg.body) == 3 and msg.body[0] == BUS_NAME and not msg.body[2]):
                raise BoxdGone()
            continue
        if fields.get(HeaderFields.reply_serial) != serial:
            continue
        if kind == MessageType.error:
            name = fields.get(HeaderFields.error_name, "")
            text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
            if name == "org.freedesktop.DBus.Error.NoReply" and "disconnected" in text:
                raise BoxdGone()  # the bus's own word that boxd left before answering
            raise CallError(name, text)
        return int(msg.body[0])


def run_in_box(client: BoxdClient, name: str, command: list[str], allow_tty: bool,
               quiet: bool = False) -> int:
    fds = _open_fds()
    use_tty = allow_tty and 0 in fds and 1 in fds and os.isatty(0) and os.isatty(1)
    try:
        cwd = os.getcwdb()
    except OSError:
        cwd = b"/"
    options: dict[str, tuple[str, Any]] = {"tty": ("b", use_tty)}
    if not command:
        options["shell"] = ("b", True)
    body = (cwd, [a.encode("utf-8", "surrogateescape") for a in command],
            {target: target for target in fds}, caller_env(), options)

    # A stopped box starts first, in view on a terminal: its first start may install packages
    # for minutes. A script that captures stderr gets only the command's own (as with Toolbx).
    from boxd.pull import start_box

    start_box(client, name, quiet=quiet or not sys.stderr.isatty())
    forwarder = _Forwarder(client)
    # In a terminal, ctrl-c travels as a byte to the box's own terminal; otherwise it is boxctl
    # that gets SIGINT and passes it on.
    forwarded = [*FORWARDED_SIGNALS] + ([] if use_tty else [signal.SIGINT])
    previous = {signum: signal.signal(signum, forwarder.on_signal) for signum in forwarded}
    if use_tty:
        previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, forwarder.on_winch)
    saved_tty = None
    if use_tty:
        import termios
        import tty

        saved_tty = termios.tcgetattr(0)
        tty.setraw(0, termios.TCSANOW)  # keep what the user typed ahead
    try:
        _watch_boxd(client)
        session_path = client.box(name, "Spawn", "ayaaya{uh}a{ss}a{sv}", body)[0]
        waiting = client.begin(session_path, SESSION, "Wait")
        forwarder.attach(session_path)  # from here on the main thread only receives
        try:
            return _wait_for_exit(client, waiting)
        except BoxdGone:
            pass
    finally:
        if saved_tty is not None:
            import termios

            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSAFLUSH, saved_tty)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.stdout.flush()
    # Said once the terminal is itself again.
    print(GONE_LINE, file=sys.stderr, flush=True)
    return GONE_STATUS
