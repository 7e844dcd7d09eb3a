"""FdStream on the kinds of fds callers hand over: pipes and regular files."""

from __future__ import annotations

import asyncio
import os
import tempfile

from boxd.fdio import FdStream


async def test_file_write_lets_go_of_the_callers_buffer() -> None:
    # Sessions write slices of one bytearray and then shrink it: a write to a regular file (done
    # in a worker thread) must not keep the buffer exported once it has returned.
    with tempfile.TemporaryFile() as target:
        stream = FdStream(target.fileno(), writable=True)
        for n in range(300):
            buffer = bytearray(b"%05d" % n * 10)
            view = memoryview(buffer)
            await stream.write(view[:5])
            view.release()
            del buffer[:5]  # BufferError if the write still holds a view of it
        stream.close()
        target.seek(0)
        assert target.read() == b"".join(b"%05d" % n for n in range(300))


async def test_pipe_round_trip_keeps_every_byte() -> None:
    read_fd, write_fd = os.pipe()
    reader, writer = FdStream(read_fd, writable=False), FdStream(write_fd, writable=True)
    os.close(read_fd)
    os.close(write_fd)
    payload = os.urandom(1 << 20)  # larger than a pipe: the writer must wait for the reader

    async def pump() -> None:
        await writer.write(payload)
        writer.close()

    task = asyncio.create_task(pump())
    received = bytearray()
    while chunk := await reader.read():
        received += chunk
    await task
    reader.close()
    assert bytes(received) == payload
