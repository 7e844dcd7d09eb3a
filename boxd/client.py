"""boxd's D-Bus client, used by boxctl: blocking jeepney, so that a `boxctl run` pays for no event
loop (dbus-next pulls in asyncio: ~70 ms of imports here, more than the rest of a run)."""

from __future__ import annotations

import os
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageFlag, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from boxd.paths import BUS_NAME, MANAGER_PATH, box_path

MANAGER = "io.github.boxd1.Manager"
BOX = "io.github.boxd1.Box"
SESSION = "io.github.boxd1.Session"


class CallError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class BoxdClient:
    def __init__(self, connection: DBusConnection) -> None:
        self.connection = connection

    @classmethod
    def connect(cls, user_bus: bool = False) -> BoxdClient:
        bus = os.environ.get("BOXD_BUS_ADDRESS") or ("SESSION" if user_bus else "SYSTEM")
        return cls(open_dbus_connection(bus, enable_fds=True))

    def close(self) -> None:
        self.connection.close()

    def _message(self, path: str, interface: str, member: str, signature: str,
                 body: tuple[Any, ...]) -> Any:
        msg = new_method_call(DBusAddress(path, bus_name=BUS_NAME, interface=interface), member,
                              signature or None, body)
        msg.header.flags |= MessageFlag.allow_interactive_authorization  # polkit may ask
        return msg

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        return self.finish(self.begin(path, interface, member, signature, body))

    def begin(self, path: str, interface: str, member: str, signature: str = "",
              body: tuple[Any, ...] = ()) -> int:
        """Send a call; its answer is for finish(serial)."""
        serial = next(self.connection.outgoing_serial)
        self.connection.send(self._message(path, interface, member, signature, body),
                             serial=serial)
        return serial

    def finish(self, serial: int) -> tuple[Any, ...]:
        while True:
            reply = self.connection.receive()
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                break
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "")
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise CallError(name, text)
        return reply.body

    def send_only(self, path: str, interface: str, member: str, signature: str = "",
                  body: tuple[Any, ...] = ()) -> None:
        """A call whose answer we do not wait for (window sizes, forwarded signals)."""
        msg = self._message(path, interface, member, signature, body)
        msg.header.flags |= MessageFlag.no_reply_expected
        self.connection.send(msg)

    def manager(self, member: str, signature: str = "", body: tuple[Any, ...] = ()
                ) -> tuple[Any, ...]:
        return self.call(MANAGER_PATH, MANAGER, member, signature, body)

    def box(self, name: str, member: str, signature: str = "", body: tuple[Any, ...] = ()
            ) -> tuple[Any, ...]:
        # The path follows from the name (see boxd.paths): no GetBox round trip.
        return self.call(box_path(name), BOX, member, signature, body)
