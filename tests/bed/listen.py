"""Listen to boxd's signals as whoever runs this, after calling GetManagedObjects as an
ObjectManager client would. Prints {"ready": true}, then one JSON line per signal as it
arrives. When stdin closes it makes one more call to boxd, whose reply comes after every
signal boxd sent before it (the bus keeps one sender's messages in order), prints
{"done": true} and exits: so the caller knows it has seen all there was to see.

    python - ADDRESS < listen.py   (stdin: a pipe the caller closes)
"""

import asyncio
import json
import sys

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus


def get_managed_objects() -> Message:
    return Message(destination="io.github.boxd1", path="/io/github/boxd1",
                   interface="org.freedesktop.DBus.ObjectManager", member="GetManagedObjects")


def show(m: Message) -> None:
    if m.message_type == MessageType.SIGNAL and m.sender != "org.freedesktop.DBus":
        print(json.dumps({"path": m.path, "member": m.member,
                          "first": m.body[0] if m.body else None}), flush=True)


async def main(address: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    bus.add_message_handler(show)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='io.github.boxd1'"]))
    await bus.call(get_managed_objects())
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await bus.call(get_managed_objects())
    print(json.dumps({"done": True}), flush=True)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
