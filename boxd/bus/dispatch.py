"""Method dispatch for boxd's objects, in front of dbus-next's.

dbus-next hands high-level methods their arguments but not the message, so it cannot say who is
calling, and it sends Python tracebacks to callers when a method raises. This dispatcher takes the
calls to boxd's objects first (through dbus-next's public message-handler hook), resolves the
sender's credentials from the bus, runs the method with the caller in a context variable, and
turns every failure into a named io.github.boxd1.Error.* with one plain sentence. It also serves
Properties and GetManagedObjects itself, so that reading a box's details is authorized like any
other call, and it keeps dbus-next from broadcasting objects to everyone on the bus.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from boxd import errors, log
from boxd.authz import Caller
from boxd.bus import wire
from boxd.bus.wire import RejectedMessage, close_fds
from boxd.paths import describe_missing

ERROR_PREFIX = "io.github.boxd1.Error."
# Calls of one user being served at once; past it, more are refused, not queued. Waiting for a
# session's end is no work (and a user may have more sessions than this), so it is not counted.
MAX_CALLS_PER_USER = 128
UNCOUNTED = {("io.github.boxd1.Session", "Wait")}
_log = log.get("boxd.bus")


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("boxd_caller")


def current_caller() -> Caller:
    """The caller of the method being served; only valid inside a dispatched method."""
    return _current.get()


PROPERTIES = "org.freedesktop.DBus.Properties"
PEER = "org.freedesktop.DBus.Peer"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
# An extra handler: (caller, message) -> (reply signature, reply body)
Handler = Callable[[Caller, Message], Awaitable[tuple[str, list[Any]]]]


@functools.cache
def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as handle:
                return handle.read(64).strip()
        except OSError:
            continue
    return ""


class Dispatcher:
    def __init__(self, bus: MessageBus, interface_prefix: str = "io.github.boxd1.") -> None:
        self.bus = bus
        self._prefix = interface_prefix
        # (path, interface name) -> (interface object, {member: method})
        self._objects: dict[tuple[str, str], tuple[ServiceInterface, dict[str, Any]]] = {}
        self._credentials: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._extra: dict[tuple[str, str], Handler] = {}
        self._paths: dict[str, int] = {}  # exported path -> how many of our interfaces
        self._calls: Counter[int] = Counter()  # uid -> calls being served
        self._lookups: dict[str, asyncio.Future[tuple[int, int]]] = {}  # sender -> asking
        self._handed_off: asyncio.Task[None] | None = None
        bus.add_message_handler(self._on_message)

    def handle(self, interface: str, member: str, handler: Handler) -> None:
        """Serve a standard method (e.g. GetManagedObjects) with the caller known."""
        self._extra[(interface, member)] = handler

    def known_callers(self) -> dict[str, int]:
        """Connections that have called boxd and are still on the bus: sender -> uid."""
        return {sender: uid for sender, (uid, _pid) in self._credentials.items()}

    def export(self, path: str, interface: ServiceInterface) -> None:
        methods = {m.name: m for m in wire.methods_of(interface) if not m.disabled}
        self._objects[(path, interface.name)] = (interface, methods)
        self._paths[path] = self._paths.get(path, 0) + 1
        self.bus.export(path, interface)

    def unexport(self, path: str, interface: ServiceInterface) -> None:
        if self._objects.pop((path, interface.name), None) is not None:
            self._paths[path] -= 1
            if not self._paths[path]:
                del self._paths[path]
        self.bus.unexport(path, interface)

    def _on_message(self, msg: Message) -> bool:
        """Every message boxd receives passes here first, and its fds are closed here, on
        every path: at once, or when the task serving the call ends (a method that keeps an fd
        dups it). dbus-next's own answers (Introspect) never use fds."""
        self._handed_off = None
        try:
            return self._route(msg)
        finally:
            task, self._handed_off = self._handed_off, None
            if task is None:
                close_fds(msg)
            elif msg.unix_fds:
                task.add_done_callback(lambda _task: close_fds(msg))

    def _route(self, msg: Message) -> bool:
        if isinstance(msg, RejectedMessage):
            if msg.message_type == MessageType.METHOD_CALL:
                self._reply(msg, Message.new_error(msg, ERROR_PREFIX + "TooLarge", msg.reason))
            # a rejected reply is an error already (for whoever awaits it)
            return msg.message_type != MessageType.ERROR
        if msg.message_type != MessageType.METHOD_CALL:
            return False
        interface_name = msg.interface or ""
        if interface_name == PEER:
            self._reply(msg, self._peer(msg))  # dbus-next's GetMachineId can leave it unanswered
            return True
        extra = self._extra.get((interface_name, msg.member))
        if extra is not None:
            self._start(self._serve_extra(msg, extra))
            return True
        if interface_name == PROPERTIES:
            if msg.path not in self._paths:  # dbus-next's answer logs a traceback
                self._reply(msg, Message.new_error(msg, ERROR_PREFIX + "NotFound",
                                                   describe_missing(msg.path)))
                return True
            self._start(self._serve_properties(msg))
            return True
        if not interface_name.startswith(self._prefix):
            return False
        entry = self._objects.get((msg.path, msg.interface))
        if entry is None:
            self._reply(msg, Message.new_error(msg, ERROR_PREFIX + "NotFound",
                                               describe_missing(msg.path)))
            return True
        interface, methods = entry
        method = methods.get(msg.member)
        if method is None:
            self._reply(msg, Message.new_error(
                msg, ERROR_PREFIX + "UnknownMethod", f"{msg.interface} has no method {msg.member}"))
            return True
        if msg.signature != method.in_signature:
            self._reply(msg, Message.new_error(
                msg, ERROR_PREFIX + "InvalidArgument",
                f"{msg.member} takes arguments of type ({method.in_signature}), "
                f"not ({msg.signature})"))
            return True
        self._start(self._serve(msg, interface, method))
        return True

    def _peer(self, msg: Message) -> Message:
        if msg.member == "Ping" and msg.signature == "":
            return Message.new_method_return(msg)
        if msg.member == "GetMachineId" and msg.signature == "":
            return Message.new_method_return(msg, "s", [_machine_id()])
        return Message.new_error(msg, ERROR_PREFIX + "UnknownMethod",
                                 f"{PEER} has no method {msg.member}({msg.signature})")

    def _start(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._handed_off = task  # the message's fds live as long as this task

    async def _caller(self, msg: Message) -> Caller:
        uid, pid = await self._sender_credentials(msg.sender)
        caller = Caller(msg.sender, uid, pid,
                        bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))
        _current.set(caller)
        return caller

    async def _serve_extra(self, msg: Message, handler: Handler) -> None:
        async def run() -> Message:
            signature, body = await handler(await self._caller(msg), msg)
            return Message.new_method_return(msg, signature, body)

        await self._answer(msg, run)

    async def _serve_properties(self, msg: Message) -> None:
        """Get/GetAll/Set on boxd's interfaces; reading asks the object's authorize_read."""

        async def run() -> Message:
            caller = await self._caller(msg)
            name = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
            entry = self._objects.get((msg.path, name))
            if entry is None:
                raise errors.InvalidArgument(f"{msg.path} has no interface {name!r}")
            interface = entry[0]
            authorize = getattr(interface, "authorize_read", None)
            if authorize is not None:
                await authorize(caller)
            props = {p.name: p for p in wire.properties_of(interface)
                     if not p.disabled}
            if msg.member == "Get" and msg.signature == "ss":
                prop = props.get(msg.body[1])
                if prop is None:
                    raise errors.InvalidArgument(f"{msg.body[0]} has no property {msg.body[1]}")
                return Message.new_method_return(
                    msg, "v", [Variant(prop.signature, getattr(interface, prop.name))])
            if msg.member == "GetAll" and msg.signature == "s":
                values = {n: Variant(p.signature, getattr(interface, n)) for n, p in props.items()}
                return Message.new_method_return(msg, "a{sv}", [values])
            if msg.member == "Set":
                raise errors.AccessDenied("boxd's properties are read-only")
            raise errors.InvalidArgument(f"Properties.{msg.member} with ({msg.signature}) "
                                         "is not a call boxd knows")

        await self._answer(msg, run)

    async def _answer(self, msg: Message, run: Callable[[], Awaitable[Message]]) -> None:
        """Run a call and reply: its result, or a named io.github.boxd1.Error with one plain
        sentence; one log event per call, with the caller."""
        started = time.monotonic()
        outcome: dict[str, Any] = {}
        uid: int | None = None
        try:
            who = await self._caller(msg)
            if (msg.interface, msg.member) not in UNCOUNTED:
                uid = who.uid
                self._calls[uid] += 1
                if self._calls[uid] > MAX_CALLS_PER_USER:
                    raise errors.TooManyCalls(
                        f"you have {MAX_CALLS_PER_USER} calls to boxd under way; wait for them")
            reply = await run()
        except errors.BoxdError as exc:
            reply = Message.new_error(msg, ERROR_PREFIX + exc.code, exc.message)
            outcome = {"error": exc.code, "message": exc.message}
        except Exception:
            # Never let Python's view of a failure reach the caller; keep it in our log.
            _log.exception("call_crashed", method=msg.member, path=msg.path)
            reply = Message.new_error(msg, ERROR_PREFIX + "Internal",
                                      "boxd hit an internal error; the daemon's log has details")
            outcome = {"error": "Internal"}
        finally:
            if uid is not None:
                self._calls[uid] -= 1
                if not self._calls[uid]:
                    del self._calls[uid]
        caller = _current.get(None)
        _log.info("call_failed" if outcome else "call", method=msg.member, path=msg.path,
                  caller_uid=caller.uid if caller else -1,
                  duration_ms=round((time.monotonic() - started) * 1000, 1), **outcome)
        self._reply(msg, reply)

    async def _serve(self, msg: Message, interface: ServiceInterface, method: Any) -> None:
        async def run() -> Message:
            await self._caller(msg)
            try:
                args = wire.args_of(msg)
            except (IndexError, TypeError):
                raise errors.InvalidArgument(
                    "a file descriptor index does not match the fds sent with the call") from None
            result = await method.fn(interface, *args)
            body, fds = wire.reply_body(result, method)
            return Message.new_method_return(msg, method.out_signature, body, fds)

        await self._answer(msg, run)  # the fds are closed after (see _on_message)

    def forget_sender(self, sender: str) -> None:
        self._credentials.pop(sender, None)

    def _reply(self, msg: Message, reply: Message) -> None:
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.bus.send(reply)

    async def _sender_credentials(self, sender: str) -> tuple[int, int]:
        """(uid, pid) of a bus connection, from the bus itself; unique names are never reused."""
        cached = self._credentials.get(sender)
        if cached is not None:
            self._credentials.move_to_end(sender)
            return cached
        # A burst of calls from a new sender asks the bus once.
        lookup = self._lookups.get(sender)
        if lookup is None:
            lookup = asyncio.ensure_future(self._ask_credentials(sender))
            self._lookups[sender] = lookup
            lookup.add_done_callback(lambda _done: self._lookups.pop(sender, None))
        return await asyncio.shield(lookup)

    async def _ask_credentials(self, sender: str) -> tuple[int, int]:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionCredentials",
            signature="s", body=[sender]))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise errors.AccessDenied("the bus could not tell who is calling")
        creds = reply.body[0]
        uid = int(creds["UnixUserID"].value)
        pid = int(creds["ProcessID"].value) if "ProcessID" in creds else 0
        self._credentials[sender] = (uid, pid)
        if len(self._credentials) > 4096:
            self._credentials.popitem(last=False)
        return uid, pid
