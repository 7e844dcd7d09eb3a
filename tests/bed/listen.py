"""Listen to boxd's signals as whoever runs this, for a few seconds, after calling
GetManagedObjects as an ObjectManager client would. Prints one JSON line per signal seen.

    python - ADDRESS SECONDS < listen.py
"""

import asyncio
import json
import sys

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus


async def main(address: str, seconds: float) -> None:
    bus = await MessageBus(bus_address=address).connect()
    seen = []
    bus.add_message_handler(lambda m: seen.append(m) if m.message_type == MessageType.SIGNAL
                            and m.sender != "org.freedesktop.DBus" else None)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='io.github.boxd1'"]))
    await bus.call(Message(destination="io.github.boxd1", path="/io/github/boxd1",
                           interface="org.freedesktop.DBus.ObjectManager",
                           member="GetManagedObjects"))
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.sleep(seconds)
    for m in seen:
        print(json.dumps({"path": m.path, "member": m.member,
                          "first": m.body[0] if m.body else None}), flush=True)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
