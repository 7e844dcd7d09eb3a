"""The dispatcher's one close point for received fds, and its per-user cap on calls in flight,
with a stand-in for the bus (the real bus: tests/e2e/test_hostile.py)."""

from __future__ import annotations

import asyncio
import os

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.service import ServiceInterface, method

from boxd.bus import dispatch, wire

IFACE = "io.github.boxd1.Test"


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.handlers = []

    def add_message_handler(self, handler) -> None:
        self.handlers.append(handler)

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def export(self, path, interface) -> None:
        pass

    async def call(self, msg: Message) -> Message:  # GetConnectionCredentials
        await asyncio.sleep(0)
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                       signature="a{sv}", body=[{"UnixUserID": Variant("u", 1000)}])


class Probe(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(IFACE)
        self.gate = asyncio.Event()
        self.kept: list[int] = []

    @method()
    async def Wait(self):
        await self.gate.wait()

    @method()
    async def Keep(self, fd: "h") -> "b":  # noqa: F821, UP037 (D-Bus signatures)
        self.kept.append(os.dup(fd))  # a method that keeps an fd dups it
        await asyncio.sleep(0.01)
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


serial = 0


def call(member: str, signature: str = "", body=(), fds: int = 0, path: str = "/t",
         interface: str = IFACE, **fields) -> Message:
    global serial
    serial += 1
    read_end, write_end = os.pipe()
    unix_fds = [os.dup(read_end) for _ in range(fds)]
    os.close(read_end)
    os.close(write_end)
    return Message(path=path, interface=interface, member=member, signature=signature,
                   body=list(body), unix_fds=unix_fds, serial=serial, sender=":1.5", **fields)


async def settle(dispatcher: dispatch.Dispatcher) -> None:
    while dispatcher._tasks:
        await asyncio.gather(*dispatcher._tasks)


async def test_every_path_closes_the_fds_it_was_sent():
    bus = FakeBus()
    dispatcher = dispatch.Dispatcher(bus)  # type: ignore[arg-type]
    probe = Probe()
    dispatcher.export("/t", probe)
    before = open_fds()
    rejected = wire.RejectedMessage(path="/t", interface=IFACE, member="Keep", serial=99,
                                    sender=":1.5", unix_fds=[os.dup(0), os.dup(0)])
    rejected.reason = "too large"
    messages = [
        call("Keep", "h", [0], fds=1),                          # served, keeps a dup
        call("Keep", "h", [3], fds=1),                          # bad fd index
        call("Keep", "s", ["x"], fds=2),                        # wrong signature
        call("Nope", fds=1),                                    # unknown method
        call("Keep", "h", [0], fds=1, path="/nope"),            # unknown object
        call("Get", "ss", [IFACE, "X"], fds=1, interface=dispatch.PROPERTIES),
        call("Get", "ss", [IFACE, "X"], fds=1, path="/nope", interface=dispatch.PROPERTIES),
        call("Ping", fds=1, interface=dispatch.PEER),
        call("Introspect", fds=1, interface="org.freedesktop.DBus.Introspectable"),
        call("X", fds=1, interface="org.example.Other"),
        call("Keep", "h", [0], fds=1, flags=MessageFlag.NO_REPLY_EXPECTED),
        call("Sig", fds=1, message_type=MessageType.SIGNAL),
        rejected,
    ]
    assert open_fds() == before + 15
    for msg in messages:
        for handler in bus.handlers:
            if handler(msg):
                break
    await settle(dispatcher)
    assert len(probe.kept) == 2
    assert open_fds() == before + 2  # only the method's own dups
    for fd in probe.kept:
        os.close(fd)
    names = [m.error_name for m in bus.sent if m.message_type == MessageType.ERROR]
    assert names.count("io.github.boxd1.Error.TooLarge") == 1
    assert "io.github.boxd1.Error.InvalidArgument" in names
    assert "io.github.boxd1.Error.NotFound" in names


async def test_a_user_has_at_most_128_calls_in_flight():
    bus = FakeBus()
    dispatcher = dispatch.Dispatcher(bus)  # type: ignore[arg-type]
    probe = Probe()
    dispatcher.export("/t", probe)
    for _ in range(dispatch.MAX_CALLS_PER_USER + 2):
        dispatcher._on_message(call("Wait"))
    for _ in range(20):
        await asyncio.sleep(0)
    refused = [m for m in bus.sent if m.message_type == MessageType.ERROR]
    assert [m.error_name for m in refused] == ["io.github.boxd1.Error.TooManyCalls"] * 2
    probe.gate.set()
    await settle(dispatcher)
    assert len(bus.sent) == dispatch.MAX_CALLS_PER_USER + 2
    assert not dispatcher._calls  # every slot given back
    dispatcher._on_message(call("Wait"))
    await settle(dispatcher)
    assert bus.sent[-1].message_type == MessageType.METHOD_RETURN
