#!/usr/bin/env python3
"""How a terminal (Ptyxis, GNOME Terminal, ...) runs a shell in a boxd box with its own PTY.

A terminal owns the PTY: it keeps the master side, and hands the follower (slave) side to boxd as
the process's stdin/stdout/stderr through Box.Spawn, exactly as it would to flatpak's HostCommand.
boxd runs the command in the box and carries the bytes; the terminal draws what comes out of the
master, writes keystrokes into it, calls Session.Resize when its window changes size, and learns
the exit status from the Exited signal (sent to it alone).

    python3 examples/terminal-spawn.py BOX [COMMAND...]     (default: the login shell)

Here the "terminal" is this script: it relays the master to its own stdout, sends nothing in.
"""

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus


def box_path(name: str) -> str:
    """Object paths escape names as systemd does: _xx for bytes other than [A-Za-z0-9]."""
    return "/io/github/boxd1/box/" + "".join(
        c if c.isascii() and c.isalnum() and not (i == 0 and c.isdigit()) else f"_{ord(c):02x}"
        for i, c in enumerate(name))


async def main(box: str, command: list[str]) -> int:
    address = os.environ.get("BOXD_BUS_ADDRESS")
    bus = await (MessageBus(bus_address=address, negotiate_unix_fd=True) if address else
                 MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)).connect()
    master, follower = pty.openpty()
    # A terminal sizes its PTY before spawning; boxd starts the process with that size.
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    exited = asyncio.get_running_loop().create_future()
    bus.add_message_handler(lambda m: exited.done() or exited.set_result(m.body[0])
                            if m.message_type == MessageType.SIGNAL and m.member == "Exited"
                            else None)
    options = {"tty": Variant("b", True)}
    if not command:
        options["shell"] = Variant("b", True)
    reply = await bus.call(Message(
        destination="io.github.boxd1", path=box_path(box), interface="io.github.boxd1.Box",
        member="Spawn", signature="ayaaya{uh}a{ss}a{sv}",
        body=[os.getcwdb() + b"\0", [a.encode() + b"\0" for a in command],
              {0: 0, 1: 0, 2: 0},  # fd targets -> index into unix_fds: the follower, thrice
              {"TERM": "xterm-256color"}, options],
        unix_fds=[follower]))
    os.close(follower)  # boxd has its own copy now
    if reply.message_type == MessageType.ERROR:
        print(f"{reply.error_name}: {reply.body[0]}", file=sys.stderr)
        return 1
    # When the window changes size later: Session.Resize(rows, cols) on reply.body[0].
    loop = asyncio.get_running_loop()
    loop.add_reader(master, lambda: _relay(master))
    status = await exited
    await asyncio.sleep(0.1)  # the last bytes
    loop.remove_reader(master)
    return int(status)


def _relay(master: int) -> None:
    try:
        sys.stdout.buffer.write(os.read(master, 65536))
        sys.stdout.flush()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:])))
