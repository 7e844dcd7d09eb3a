"""Call one boxd method as whoever runs this (tests run it as real users with runuser).

    python - ADDRESS PATH INTERFACE METHOD SIGNATURE JSON_ARGS|@FILE < call.py

Prints one JSON line: {"body": [...]} or {"error": NAME, "message": TEXT}. Only dbus-next is needed,
so it runs from any venv an unprivileged user can read. Arguments are JSON with tagged objects:
{"$v": [sig, value]} a Variant, {"$b": text} bytes, {"$i": [[int, value], ...]} a dict with integer
keys, {"$fd": n} this process's fd n sent along (the value is its index), {"$idx": n} a raw index.
"""

import asyncio
import json
import os
import sys

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus


def _decode(value, fds):
    if isinstance(value, dict):
        if set(value) == {"$v"}:
            signature, inner = value["$v"]
            return Variant(signature, _decode(inner, fds))
        if set(value) == {"$b"}:
            return value["$b"].encode()
        if set(value) == {"$i"}:
            return {int(k): _decode(v, fds) for k, v in value["$i"]}
        if set(value) == {"$fd"}:
            fds.append(value["$fd"])
            return len(fds) - 1
        if set(value) == {"$idx"}:
            return value["$idx"]
        return {k: _decode(v, fds) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, fds) for v in value]
    return value


def _encode(value):
    if isinstance(value, Variant):
        return _encode(value.value)
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


async def main(address, path, interface, member, signature, args):
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    fds = []
    body = _decode(args, fds)
    # BOXD_CALL_REPEAT=N makes the same call N times on one connection (bursts); the last
    # reply is printed.
    for _ in range(int(os.environ.get("BOXD_CALL_REPEAT", "1"))):
        reply = await bus.call(Message(destination="io.github.boxd1", path=path,
                                       interface=interface, member=member, signature=signature,
                                       body=body, unix_fds=fds))
    if reply.message_type == MessageType.ERROR:
        print(json.dumps({"error": reply.error_name, "message": (reply.body or [""])[0]}))
    else:
        print(json.dumps({"body": _encode(reply.body)}))
    bus.disconnect()


if __name__ == "__main__":
    address, path, interface, member, signature, args = sys.argv[1:7]
    if args.startswith("@"):  # large arguments come in a file (argv strings are capped)
        with open(args[1:]) as handle:
            args = handle.read()
    asyncio.run(main(address, path, interface, member, signature, json.loads(args)))
