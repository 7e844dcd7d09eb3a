"""FdStream on the kinds of fds callers hand over: pipes, FIFOs, ptys, devices and regular files,
and the access modes they were opened with."""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile

import pytest

from boxd.errors import BadFd
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


# -- access modes: boxd (root) must never widen what a caller's fd allows ------------------------

def _fifo(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


async def test_a_read_only_fifo_fd_is_refused_for_writing(tmp_path) -> None:
    path = _fifo(tmp_path)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BadFd, match="stdout was opened read-only"):
            FdStream(read_fd, writable=True, what="stdout")
        assert os.fstat(read_fd)  # the caller's fd is untouched
    finally:
        os.close(read_fd)


async def test_a_write_only_fd_is_refused_for_reading(tmp_path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(BadFd, match="stdin was opened write-only"):
            FdStream(write_fd, writable=False, what="stdin")
        with pytest.raises(BadFd):
            FdStream(read_fd, writable=True)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    (tmp_path / "f").write_bytes(b"")
    read_only = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(BadFd):
            FdStream(read_only, writable=True)
    finally:
        os.close(read_only)


async def test_o_path_fds_are_refused(tmp_path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"secret")
    fd = os.open(target, os.O_PATH)
    try:
        for writable in (False, True):
            with pytest.raises(BadFd, match="O_PATH"):
                FdStream(fd, writable=writable)
    finally:
        os.close(fd)


async def test_a_read_write_fifo_is_used_in_one_direction_only(tmp_path) -> None:
    path = _fifo(tmp_path)
    both = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        stream = FdStream(both, writable=False)
        assert fcntl.fcntl(stream.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        # The caller's own description keeps its flags (no O_NONBLOCK forced on it).
        stream.close()
        out = FdStream(both, writable=True)
        assert fcntl.fcntl(out.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        out.close()
    finally:
        os.close(both)


async def test_a_pty_slave_gets_its_own_non_blocking_description() -> None:
    master, slave = os.openpty()
    try:
        before = fcntl.fcntl(slave, fcntl.F_GETFL)
        stream = FdStream(slave, writable=False)
        assert fcntl.fcntl(stream.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(slave, fcntl.F_GETFL) == before  # the caller's is left alone
        os.write(master, b"hi\n")
        assert await asyncio.wait_for(stream.read(), 10) == b"hi\n"
        stream.close()
    finally:
        os.close(master)
        os.close(slave)


async def test_other_character_devices_are_not_re_opened() -> None:
    # /dev/null opened read-only: refused for writing; opened for writing, boxd shares the
    # caller's description (restoring its flags) rather than opening the device again.
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        before = fcntl.fcntl(fd, fcntl.F_GETFL)
        stream = FdStream(fd, writable=True)
        assert os.path.samestat(os.fstat(stream.fd), os.fstat(fd))
        await stream.write(b"x")
        stream.close()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == before
    finally:
        os.close(fd)
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(BadFd):
            FdStream(fd, writable=True)
    finally:
        os.close(fd)
