"""boxd's D-Bus client, used by boxctl: blocking jeepney, so that a `boxctl run` pays for no event
loop (dbus-next pulls in asyncio: ~70 ms of imports here, more than the rest of a run).

Nothing here waits forever: a call's answer is awaited only while boxd shows signs of life (it
is pinged when quiet, and gets BOXCTL_TIMEOUT seconds to answer), and a watcher of boxd's bus name
(watching_daemon) learns at once when the boxd that was answering leaves the bus. Whatever keeps
boxctl from boxd comes out as Unreachable, with the reason in words."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageFlag, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import Message

from boxd.paths import BUS_NAME, MANAGER_PATH, box_path

MANAGER = "io.github.boxd1.Manager"
BOX = "io.github.boxd1.Box"
SESSION = "io.github.boxd1.Session"
BUS_DAEMON = "org.freedesktop.DBus"
DEFAULT_TIMEOUT = 30.0
_HANDLED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH}


class CallError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class Unreachable(CallError):
    """boxctl cannot talk to boxd. `kind` says why: "bus" (no bus to talk on), "absent" (boxd
    is not running and the bus could not start it), "gone" (it left the bus while we waited),
    "silent" (it stopped answering)."""

    def __init__(self, kind: str, reason: str, bus: str = "system") -> None:
        super().__init__(f"{BUS_DAEMON}.Error.{kind}", reason)
        self.kind = kind
        self.bus = bus


def call_timeout() -> float | None:
    """How long boxd may stay silent: BOXCTL_TIMEOUT seconds (0: no limit), 30 by default."""
    text = os.environ.get("BOXCTL_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value > 0 else None


# The bus's own errors for a call boxd never answered, by what they mean for the user.
_ABSENT = {"ServiceUnknown", "NameHasNoOwner", "ServiceNotFound"}
_GONE = {"NoReply", "Disconnected"}
_SILENT = {"TimedOut", "Timeout"}


def unreachable_from(name: str, message: str, bus: str) -> Unreachable | None:
    """The bus's error `name` as Unreachable, or None when it is not about reaching boxd."""
    short = name.rsplit(".", 1)[-1]
    if name.startswith((f"{BUS_DAEMON}.Error.Spawn.", "org.freedesktop.systemd1.")):
        return Unreachable("absent", f"boxd is not running, and the {bus} bus could not start it "
                                     f"({message or name})", bus)
    if not name.startswith(f"{BUS_DAEMON}.Error."):
        return None
    if short in _ABSENT:
        return Unreachable("absent", f"boxd is not running on the {bus} bus", bus)
    if short in _GONE and "disconnected" in (message or "disconnected").lower():
        return Unreachable("gone", "boxd left the bus before answering (it stopped or "
                                   "restarted)", bus)
    if short in _GONE or short in _SILENT:
        return Unreachable("silent", f"boxd did not answer ({message or name})", bus)
    return None


class BoxdClient:
    def __init__(self, connection: DBusConnection, bus: str = "system") -> None:
        self.connection = connection
        self.bus = bus                      # "system" or "session", for messages
        self.timeout = call_timeout()
        self.daemon = ""                    # the unique name of the boxd that answered
        self._watching = False
        self._match_added = False

    @classmethod
    def connect(cls, user_bus: bool = False) -> BoxdClient:
        kind = "session" if user_bus else "system"
        bus = os.environ.get("BOXD_BUS_ADDRESS") or kind.upper()
        try:
            return cls(open_dbus_connection(bus, enable_fds=True), kind)
        except KeyError as exc:  # jeepney reads the address from the environment
            raise Unreachable("bus", f"{exc.args[0]} is not set: there is no {kind} bus to "
                                     "find it on", kind) from None
        except (OSError, EOFError, ValueError) as exc:
            raise Unreachable("bus", f"cannot connect to the {kind} bus ({_strerror(exc)})",
                              kind) from None

    def close(self) -> None:
        self.connection.close()

    def _message(self, path: str, interface: str, member: str, signature: str,
                 body: tuple[Any, ...]) -> Any:
        msg = new_method_call(DBusAddress(path, bus_name=BUS_NAME, interface=interface), member,
                              signature or None, body)
        msg.header.flags |= MessageFlag.allow_interactive_authorization  # polkit may ask
        return msg

    def _send(self, msg: Message, serial: int | None = None) -> None:
        try:
            self.connection.send(msg, serial=serial)
        except (OSError, EOFError) as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: BaseException) -> Unreachable:
        return Unreachable("gone", f"the connection to the {self.bus} bus broke "
                                   f"({_strerror(exc)})", self.bus)

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        return self.finish(self.begin(path, interface, member, signature, body))

    def begin(self, path: str, interface: str, member: str, signature: str = "",
              body: tuple[Any, ...] = ()) -> int:
        """Send a call; its answer is for finish(serial)."""
        serial = next(self.connection.outgoing_serial)
        self._send(self._message(path, interface, member, signature, body), serial)
        return serial

    def finish(self, serial: int, patience: float | bool | None = True) -> tuple[Any, ...]:
        """The answer to call `serial`. boxd may stay silent for `patience` seconds (True: the
        client's BOXCTL_TIMEOUT; None: as long as it takes, e.g. a session's Wait, where pinging
        would race the signal handlers' sends)."""
        while True:
            reply = self.receive(patience)
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                break
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "")
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise unreachable_from(name, text, self.bus) or CallError(name, text)
        sender = reply.header.fields.get(HeaderFields.sender, "")
        if sender and sender != BUS_DAEMON:
            self.daemon = sender
        return reply.body

    @contextlib.contextmanager
    def watching_daemon(self) -> Iterator[None]:
        """Within this, receive() raises Unreachable as soon as the boxd that answered leaves
        the bus (for jobs: a boxd that dies mid-start never sends Finished). The match is sent
        without waiting: the bus installs it before it routes our next call, so a boxd that
        answers that call and dies is seen."""
        if not self._match_added:
            self._match_added = True
            rule = (f"type='signal',sender='{BUS_DAEMON}',interface='{BUS_DAEMON}',"
                    f"member='NameOwnerChanged',path='/org/freedesktop/DBus',arg0='{BUS_NAME}'")
            self._send(new_method_call(DBusAddress("/org/freedesktop/DBus", bus_name=BUS_DAEMON,
                                                   interface=BUS_DAEMON), "AddMatch", "s",
                                       (rule,)))
        outer, self._watching = self._watching, True
        try:
            yield
        finally:
            self._watching = outer

    def receive(self, patience: float | bool | None = True) -> Message:
        """The next message for us. Raises Unreachable when the connection breaks, when the
        watched boxd leaves the bus, or when boxd shows no sign of life for `patience` s."""
        limit = self.timeout if patience is True else (patience or None)
        heard = time.monotonic()          # the last sign of life from boxd
        ping_every = max(0.2, limit / 3) if limit else None
        pinged = 0.0
        ping_serial = -1
        while True:
            wait = None
            if limit is not None and ping_every is not None:
                now = time.monotonic()
                wait = max(0.0, min(heard + limit, max(heard, pinged) + ping_every) - now)
            try:
                msg = self.connection.receive(timeout=wait)
            except TimeoutError:
                now = time.monotonic()
                assert limit is not None
                if now >= heard + limit:
                    raise Unreachable("silent", f"boxd did not answer within {limit:g} s "
                                                "(it may be stopped or overloaded)",
                                      self.bus) from None
                ping_serial = next(self.connection.outgoing_serial)
                ping = new_method_call(DBusAddress("/", bus_name=BUS_NAME,
                                                   interface="org.freedesktop.DBus.Peer"),
                                       "Ping")
                # Blocked around the send: a handler that sends too (ctrl-c cancelling a job)
                # must not cut into the middle of this message.
                held = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
                try:
                    self._send(ping, ping_serial)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                pinged = now
                continue
            except (OSError, EOFError) as exc:
                raise self._lost(exc) from None
            fields = msg.header.fields
            sender = fields.get(HeaderFields.sender, "")
            if sender != BUS_DAEMON:
                heard = time.monotonic()
            if fields.get(HeaderFields.reply_serial) == ping_serial:
                continue
            if self._watching and fields.get(HeaderFields.member) == "NameOwnerChanged" \
                    and sender == BUS_DAEMON and msg.body[:1] == (BUS_NAME,):
                _name, old, _new = msg.body
                if old and (not self.daemon or old == self.daemon):
                    raise Unreachable("gone", "boxd left the bus before finishing (it stopped "
                                              "or restarted)", self.bus)
                continue
            return msg

    def send_only(self, path: str, interface: str, member: str, signature: str = "",
                  body: tuple[Any, ...] = ()) -> None:
        """A call whose answer we do not wait for (window sizes, forwarded signals)."""
        msg = self._message(path, interface, member, signature, body)
        msg.header.flags |= MessageFlag.no_reply_expected
        self._send(msg)

    def manager(self, member: str, signature: str = "", body: tuple[Any, ...] = ()
                ) -> tuple[Any, ...]:
        return self.call(MANAGER_PATH, MANAGER, member, signature, body)

    def box(self, name: str, member: str, signature: str = "", body: tuple[Any, ...] = ()
            ) -> tuple[Any, ...]:
        # The path follows from the name (see boxd.paths): no GetBox round trip.
        return self.call(box_path(name), BOX, member, signature, body)


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__
