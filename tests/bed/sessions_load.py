"""Run many short sessions in a box, a bounded number at a time, as whoever runs this.

    python - ADDRESS BOX_PATH COUNT CONCURRENCY OUTPUT_BYTES < sessions_load.py

Each session is a client of its own (a new bus connection, as each `boxctl run` is): it spawns
`head -c OUTPUT_BYTES /dev/zero` with stdout on a pipe, reads it all, and waits for the exit
status. Prints one JSON line: {"ok": N, "failures": [first few reasons], "last_reply": T}, T the
time (time.time()) of the last answer from boxd. Only dbus-next is needed,
so it runs from any venv an unprivileged user can read.
"""

import asyncio
import json
import os
import sys
import time

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

SESSION = "io.github.boxd1.Session"
_last_reply = [0.0]


async def _call(bus, path, interface, member, signature="", body=(), fds=()):
    reply = await bus.call(Message(destination="io.github.boxd1", path=path, interface=interface,
                                   member=member, signature=signature, body=list(body),
                                   unix_fds=list(fds)))
    if reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name}: {(reply.body or [''])[0]}")
    return reply.body


async def _drain(fd):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    total = 0
    try:
        while data := await reader.read(1 << 16):
            total += len(data)
    finally:
        transport.close()
    return total


async def one(address, box_path, size):
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        drained = asyncio.ensure_future(_drain(read_end))
        try:
            [session] = await _call(
                bus, box_path, "io.github.boxd1.Box", "Spawn", "ayaaya{uh}a{ss}a{sv}",
                [b"/", [b"head", b"-c", str(size).encode(), b"/dev/zero"],
                 {0: 0, 1: 1, 2: 2}, {}, {"tty": Variant("b", False)}],
                fds=[null, write_end, write_end])
        finally:
            os.close(write_end)  # boxd holds its own copy while the session runs
        [status] = await _call(bus, session, SESSION, "Wait")
        _last_reply[0] = time.time()
        received = await drained
        if status != 0 or received != size:
            raise RuntimeError(f"status {status}, {received} of {size} bytes")
    finally:
        os.close(null)
        bus.disconnect()


async def main(address, box_path, count, concurrency, size):
    gate = asyncio.Semaphore(concurrency)
    failures = []

    async def guarded():
        async with gate:
            try:
                await asyncio.wait_for(one(address, box_path, size), 120)
            except Exception as exc:  # reported, not raised: count them all
                failures.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(guarded() for _ in range(count)))
    print(json.dumps({"ok": count - len(failures), "failures": failures[:5],
                      "last_reply": _last_reply[0]}))


if __name__ == "__main__":
    address, box_path, count, concurrency, size = sys.argv[1:6]
    asyncio.run(main(address, box_path, int(count), int(concurrency), int(size)))
