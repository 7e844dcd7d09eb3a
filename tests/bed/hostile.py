"""A hostile local user: raw D-Bus messages at boxd, as whoever runs this (tests and bench/ run it
as real unprivileged users with runuser). It needs dbus-next and boxd's wire module.

    python - ADDRESS fds COUNT [BOX_PATH] < hostile.py
        COUNT calls, each carrying an fd, spread over every path a message can take in boxd
        (served, refused, wrong signature, unknown object, method or interface, Properties,
        Introspect, Peer, GetManagedObjects, no reply wanted, signals, too large, too many
        values). Prints {"sent": N, "replies": {reply or error name: count}}.
    python - ADDRESS flood SECONDS < hostile.py
        The largest messages the bus takes (and the largest boxd decodes), to every method,
        from two connections, two in flight on each, for SECONDS. Prints "flooding" once the first
        is sent, then {"sent": N, "bytes": B, "replies": {...}}.
    python - ADDRESS probe COUNT < hostile.py
        COUNT ListBoxes calls one after another (a pause between); prints their latencies.
"""

import asyncio
import collections
import json
import os
import sys
import time

from dbus_next import Message, MessageFlag, MessageType, Variant

# dbus-next 0.2.3's own bus drops the connection when its socket is full; boxd's waits.
from boxd.bus.wire import BoxdBus as MessageBus

NAME = "io.github.boxd1"
MANAGER = "/io/github/boxd1"
MI = "io.github.boxd1.Manager"
BI = "io.github.boxd1.Box"
PROPS = "org.freedesktop.DBus.Properties"
# dbus-daemon's default max_message_size is 32 MiB; leave room for the header.
BUS_MAX = 32 * 1024 * 1024 - 4096
BOXD_MAX = 1024 * 1024  # the largest body boxd decodes (boxd/bus/wire.py)
IN_FLIGHT = 48


def _call(path, interface, member, signature="", body=(), flags=MessageFlag.NONE,
          message_type=MessageType.METHOD_CALL, fds=()):
    return Message(destination=NAME, path=path, interface=interface, member=member,
                   signature=signature, body=list(body), flags=flags,
                   message_type=message_type, unix_fds=list(fds))


def fd_paths(fd, box_path):
    """(label, message) for every path, each message carrying `fd`."""
    one = [fd]
    paths = [
        ("served", _call(MANAGER, MI, "ListBoxes", fds=one)),
        ("served, refused", _call(MANAGER, MI, "RemoveImage", "sb", ["nope", False], fds=one)),
        ("wrong signature", _call(MANAGER, MI, "ListBoxes", "h", [0], fds=one)),
        ("unknown object", _call(MANAGER + "/box/nope", BI, "Start", "h", [0], fds=one)),
        ("unknown method", _call(MANAGER, MI, "Nope", "h", [0], fds=one)),
        ("not boxd's interface (the bus refuses)",
         _call(MANAGER, "org.example.Nope", "X", "h", [0], fds=one)),
        ("Properties.Get", _call(MANAGER, PROPS, "Get", "ss", [MI, "Version"], fds=one)),
        ("Properties.GetAll", _call(MANAGER, PROPS, "GetAll", "s", [MI], fds=one)),
        ("Properties.Set (the bus refuses)",
         _call(MANAGER, PROPS, "Set", "ssv", [MI, "Version", Variant("h", 0)], fds=one)),
        ("Properties elsewhere", _call("/nope", PROPS, "Get", "ss", [MI, "Version"], fds=one)),
        ("Introspect", _call(MANAGER, "org.freedesktop.DBus.Introspectable", "Introspect",
                             fds=one)),
        ("Introspect /", _call("/", "org.freedesktop.DBus.Introspectable", "Introspect",
                               fds=one)),
        ("Introspect, wrong signature", _call(MANAGER, "org.freedesktop.DBus.Introspectable",
                                              "Introspect", "h", [0], fds=one)),
        ("Peer.Ping", _call("/", "org.freedesktop.DBus.Peer", "Ping", fds=one)),
        ("Peer.GetMachineId", _call("/", "org.freedesktop.DBus.Peer", "GetMachineId",
                                    fds=one)),
        ("GetManagedObjects", _call(MANAGER, "org.freedesktop.DBus.ObjectManager",
                                    "GetManagedObjects", fds=one)),
        ("no reply wanted", _call(MANAGER, MI, "ListBoxes", "h", [0],
                                  flags=MessageFlag.NO_REPLY_EXPECTED, fds=one)),
        ("no reply wanted, served", _call(MANAGER, MI, "ListBoxes",
                                          flags=MessageFlag.NO_REPLY_EXPECTED, fds=one)),
        ("signal", _call(MANAGER, MI, "Nope", "h", [0], message_type=MessageType.SIGNAL,
                         fds=one)),
        ("too large", _call(MANAGER, MI, "ListBoxes", "ayh", [b"\0" * (BOXD_MAX + 1), 0],
                            fds=one)),
        ("too many values", _call(MANAGER, MI, "ListBoxes", "aih", [[0] * 16400, 0],
                                  fds=one)),
        ("Spawn, unknown box", _call(MANAGER + "/box/nope", BI, "Spawn", "ayaaya{uh}a{ss}a{sv}",
                                     [b"/", [b"true"], {0: 0}, {}, {}], fds=one)),
    ]
    if box_path:
        paths.append(("Spawn, someone else's box", _call(
            box_path, BI, "Spawn", "ayaaya{uh}a{ss}a{sv}", [b"/", [b"true"], {0: 0}, {}, {}],
            fds=one)))
    return paths


async def _send(bus, msg, replies):
    if msg.message_type == MessageType.SIGNAL:
        await bus.send(msg)
        replies["(signal sent)"] += 1
        return
    reply = await bus.call(msg)
    if reply is None:
        replies["(no reply wanted)"] += 1
    elif reply.message_type == MessageType.ERROR:
        replies[reply.error_name] += 1
    else:
        replies["(return)"] += 1


async def fds(address, count, box_path=""):
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    read_end, _write_end = os.pipe()
    paths = fd_paths(read_end, box_path)
    replies = collections.Counter()
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(msg):
        async with slots:
            await _send(bus, msg, replies)

    # A Message is sent once (dbus-next numbers it as it goes): a fresh round each time.
    messages = []
    while len(messages) < count:
        messages += [msg for _, msg in fd_paths(read_end, box_path)]
    await asyncio.gather(*(one(m) for m in messages[:count]))
    # Messages are handled in order: once this is answered, every one before it was read.
    await bus.call(_call("/", "org.freedesktop.DBus.Peer", "Ping"))
    print(json.dumps({"sent": count, "paths": [label for label, _ in paths],
                      "replies": dict(replies)}))
    bus.disconnect()


def flood_messages():
    """The largest message the bus takes and the largest boxd reads, to every method."""
    huge = bytes(BUS_MAX)
    largest_read = "x" * (BOXD_MAX - 64)
    targets = [(MANAGER, MI, m) for m in ("CreateBox", "GetBox", "ListBoxes", "PullImage",
                                          "Apply", "BuildDefaultImage", "RemoveImage",
                                          "ListImages")]
    targets += [(MANAGER + "/box/nope", BI, m) for m in ("Start", "Spawn", "Configure")]
    targets += [(MANAGER, PROPS, "GetAll"),
                (MANAGER, "org.freedesktop.DBus.Introspectable", "Introspect")]
    for path, interface, member in targets:
        yield _call(path, interface, member, "ay", [huge])
        yield _call(path, interface, member, "sa{sv}", [largest_read, {}])


async def flood(address, seconds):
    sent = collections.Counter()
    replies = collections.Counter()
    deadline = time.monotonic() + seconds
    announced = False

    async def connection():
        nonlocal announced
        bus = await MessageBus(bus_address=address).connect()
        messages = flood_messages()

        async def sender():
            nonlocal announced, messages
            while time.monotonic() < deadline:
                msg = next(messages, None)
                if msg is None:  # a Message is sent once: a fresh round
                    messages = flood_messages()
                    continue
                sent["messages"] += 1
                sent["bytes"] += len(msg.body[0])
                if not announced:
                    announced = True
                    print("flooding", flush=True)
                await _send(bus, msg, replies)

        await asyncio.gather(*(sender() for _ in range(2)))
        bus.disconnect()

    await asyncio.gather(connection(), connection())
    print(json.dumps({"sent": sent["messages"], "bytes": sent["bytes"],
                      "replies": dict(replies)}), flush=True)


async def probe(address, count):
    bus = await MessageBus(bus_address=address).connect()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        reply = await bus.call(_call(MANAGER, MI, "ListBoxes"))
        latencies.append(time.perf_counter() - started)
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        await asyncio.sleep(0.1)
    print(json.dumps({"latencies": latencies}))
    bus.disconnect()


if __name__ == "__main__":
    address, mode, *rest = sys.argv[1:]
    if mode == "fds":
        asyncio.run(fds(address, int(rest[0]), rest[1] if len(rest) > 1 else ""))
    elif mode == "flood":
        asyncio.run(flood(address, float(rest[0])))
    elif mode == "probe":
        asyncio.run(probe(address, int(rest[0])))
    else:
        sys.exit(f"unknown mode {mode}")
