"""Method dispatch for boxd's own interfaces, in front of dbus-next's.

dbus-next hands high-level methods their arguments but not the message, so it cannot say who is
calling, and it sends Python tracebacks to callers when a method raises. This dispatcher takes the
calls to io.github.boxd1.* interfaces first (through dbus-next's public message-handler hook),
resolves the sender's credentials from the bus, runs the method with the caller in a context
variable, and turns every failure into a named io.github.boxd1.Error.* with one plain sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface

from boxd import errors, log
from boxd.paths import describe_missing

ERROR_PREFIX = "io.github.boxd1.Error."
_log = log.get("boxd.bus")


@dataclass(frozen=True)
class Caller:
    sender: str
    uid: int
    pid: int
    allow_interactive: bool


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("boxd_caller")


def current_caller() -> Caller:
    """The caller of the method being served; only valid inside a dispatched method."""
    return _current.get()


class Dispatcher:
    def __init__(self, bus: MessageBus, interface_prefix: str = "io.github.boxd1.") -> None:
        self.bus = bus
        self._prefix = interface_prefix
        # (path, interface name) -> (interface object, {member: method})
        self._objects: dict[tuple[str, str], tuple[ServiceInterface, dict[str, Any]]] = {}
        self._credentials: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        bus.add_message_handler(self._on_message)

    def export(self, path: str, interface: ServiceInterface) -> None:
        methods = {m.name: m for m in ServiceInterface._get_methods(interface) if not m.disabled}
        self._objects[(path, interface.name)] = (interface, methods)
        self.bus.export(path, interface)

    def unexport(self, path: str, interface: ServiceInterface) -> None:
        self._objects.pop((path, interface.name), None)
        self.bus.unexport(path, interface)

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.METHOD_CALL or not (msg.interface or "").startswith(
            self._prefix
        ):
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
        task = asyncio.get_running_loop().create_task(self._serve(msg, interface, method))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _serve(self, msg: Message, interface: ServiceInterface, method: Any) -> None:
        started = time.monotonic()
        uid = -1
        try:
            uid, pid = await self._sender_credentials(msg.sender)
            _current.set(Caller(msg.sender, uid, pid,
                                bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)))
            try:
                args = ServiceInterface._msg_body_to_args(msg)
            except (IndexError, TypeError):
                raise errors.InvalidArgument(
                    "a file descriptor index does not match the fds sent with the call") from None
            result = await method.fn(interface, *args)
            body, fds = ServiceInterface._fn_result_to_body(result, method.out_signature_tree)
            reply = Message.new_method_return(msg, method.out_signature, body, fds)
            _log.info("call", method=msg.member, path=msg.path, caller_uid=uid,
                      duration_ms=round((time.monotonic() - started) * 1000, 1))
        except errors.BoxdError as exc:
            reply = Message.new_error(msg, ERROR_PREFIX + exc.code, exc.message)
            _log.info("call_failed", method=msg.member, path=msg.path, caller_uid=uid,
                      error=exc.code, message=exc.message,
                      duration_ms=round((time.monotonic() - started) * 1000, 1))
        except Exception:
            # Never let Python's view of a failure reach the caller; keep it in our log.
            _log.exception("call_crashed", method=msg.member, path=msg.path, caller_uid=uid)
            reply = Message.new_error(msg, ERROR_PREFIX + "Internal",
                                      "boxd hit an internal error; the daemon's log has details")
        finally:
            # A message's fds belong to the call: a method that keeps one dups it.
            for fd in msg.unix_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reply(msg, reply)

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
