"""Short commands boxd runs in a box for its own work (exports), with their output captured.

They run as the box's owner, and what they print is the owner's to choose (a desktop file can be
a link to /dev/zero, a loop can print for ever): the output is bounded in size and the run in
time, and a command that overruns either is killed with its children (through pidfds) and
reported with a named error. Knows podman; nothing about D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from boxd import errors, log, podman
from boxd.process import pin_exec
from boxd.sessions import exit_status

_log = log.get("boxd.capture")

MAX_OUTPUT = 4 << 20      # bytes of stdout and stderr together
TIMEOUT = 15.0            # seconds, from creating the exec to learning its status
_FRAME = struct.Struct(">BxxxI")


class _Overrun(Exception):
    pass


async def run_captured(client: podman.PodmanClient, box: str, argv: list[str], user: str,
                       stdin: bytes | None = None, *, max_output: int = MAX_OUTPUT,
                       timeout: float = TIMEOUT) -> tuple[int, bytes, bytes]:
    """Run `argv` in `box` as `user`, feed it `stdin`, and return (status, stdout, stderr).
    Raises LimitReached past `max_output` bytes of output, Timeout past `timeout` seconds."""
    exec_id = ""
    stream: podman.ExecStream | None = None
    try:
        async with asyncio.timeout(timeout):
            exec_id = await client.exec_create(box, {
                "Cmd": argv, "User": user, "AttachStdout": True, "AttachStderr": True,
                "Tty": False, "AttachStdin": stdin is not None})
            stream = await client.exec_start(exec_id, tty=False)
            if stdin is not None:
                stream.writer.write(stdin)
                await stream.writer.drain()
                stream.writer.write_eof()
            buffer = bytearray(stream.initial)
            while data := await stream.reader.read(1 << 20):
                buffer += data
                if len(buffer) > max_output + _FRAME.size * 64:  # framing: a few headers' slack
                    raise _Overrun
            stream.writer.close()
            stream = None
            out, err = _unframe(buffer)
            if len(out) + len(err) > max_output:
                raise _Overrun
            return await exit_status(client, exec_id), out, err
    except TimeoutError:
        await _kill(client, exec_id, box, "timeout")
        raise errors.Timeout(f"a command boxd ran in box {box!r} did not finish within "
                             f"{timeout:g} s; it was stopped") from None
    except _Overrun:
        await _kill(client, exec_id, box, "output_limit")
        raise errors.LimitReached(f"a command boxd ran in box {box!r} printed more than "
                                  f"{max_output} bytes; it was stopped") from None
    finally:
        if stream is not None:
            stream.writer.close()


def _unframe(buffer: bytearray) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    offset = 0
    while len(buffer) - offset >= _FRAME.size:
        kind, length = _FRAME.unpack_from(buffer, offset)
        start = offset + _FRAME.size
        (err if kind == 2 else out).extend(buffer[start:start + length])
        offset = start + length
    return bytes(out), bytes(err)


async def _kill(client: podman.PodmanClient, exec_id: str, box: str, why: str) -> None:
    _log.warning("captured_run_stopped", box=box, exec_id=exec_id, why=why)
    if not exec_id:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            process = await pin_exec(client, exec_id)
            if process is not None:
                # Its children too: a forked child blocked in open() would outlive it.
                killed = process.kill_tree()
                process.close()
                _log.info("captured_run_killed", box=box, exec_id=exec_id, processes=killed)
