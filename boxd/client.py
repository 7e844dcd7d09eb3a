"""A small D-Bus client for boxd, used by boxctl. Low-level calls (no introspection round trip)
keep each command to one connection and as few messages as possible."""

from __future__ import annotations

import os
from typing import Any

from dbus_next import BusType, Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

BUS_NAME = "io.github.boxd1"
MANAGER_PATH = "/io/github/boxd1"
MANAGER = "io.github.boxd1.Manager"
BOX = "io.github.boxd1.Box"


class CallError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class BoxdClient:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, user_bus: bool = False) -> BoxdClient:
        address = os.environ.get("BOXD_BUS_ADDRESS")
        if address:
            bus = MessageBus(bus_address=address, negotiate_unix_fd=True)
        else:
            bus = MessageBus(bus_type=BusType.SESSION if user_bus else BusType.SYSTEM,
                             negotiate_unix_fd=True)
        return cls(await bus.connect())

    def disconnect(self) -> None:
        self.bus.disconnect()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, unix_fds: list[int] | None = None) -> list[Any]:
        reply = await self.bus.call(Message(
            destination=BUS_NAME, path=path, interface=interface, member=member,
            signature=signature, body=body or [], unix_fds=unix_fds or [],
            flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))  # polkit may ask the user
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise CallError(reply.error_name or "", text)
        return reply.body

    async def manager(self, member: str, signature: str = "", body: list[Any] | None = None
                      ) -> list[Any]:
        return await self.call(MANAGER_PATH, MANAGER, member, signature, body)

    async def box_path(self, name: str) -> str:
        return (await self.manager("GetBox", "s", [name]))[0]

    async def box(self, name: str, member: str, signature: str = "",
                  body: list[Any] | None = None, unix_fds: list[int] | None = None) -> list[Any]:
        return await self.call(await self.box_path(name), BOX, member, signature, body, unix_fds)

    async def get_property(self, path: str, interface: str, name: str) -> Any:
        reply = await self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                [interface, name])
        return reply[0].value
