"""Async reads and writes on file descriptors handed to boxd by its callers (terminals' PTYs,
pipes, sockets, files).

A caller's fd shares its open file description with the caller, so setting O_NONBLOCK on it would
change the caller's own stdin too. Where the kernel lets us, we open our own description of the
same object through /proc/self/fd (ptys, pipes) and make only that one non-blocking; regular files
cannot be polled, so they are read and written in a worker thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat


class FdStream:
    def __init__(self, fd: int, writable: bool) -> None:
        self.fd, self._restore_flags, self._threaded = _own_description(fd, writable)
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    async def read(self, size: int = 65536) -> bytes:
        """Some bytes, or b"" at end of input (or a hung-up terminal)."""
        if self._threaded:
            return await asyncio.to_thread(os.read, self.fd, size)
        while True:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await self._ready(self._loop.add_reader, self._loop.remove_reader)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the terminal's other side is gone
                    return b""
                raise

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._threaded:
                # A copy: the worker thread drops its arguments only after waking us, and a
                # view it still held would pin the caller's buffer (BufferError on resize).
                written = await asyncio.to_thread(os.write, self.fd, bytes(view))
            else:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    await self._ready(self._loop.add_writer, self._loop.remove_writer)
                    continue
            view = view[written:]

    async def _ready(self, add, remove) -> None:  # type: ignore[no-untyped-def]
        future = self._loop.create_future()
        add(self.fd, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            remove(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._restore_flags is not None:
            try:
                import fcntl

                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._restore_flags)
            except OSError:
                pass
        os.close(self.fd)


def _own_description(fd: int, writable: bool) -> tuple[int, int | None, bool]:
    """(our fd, flags to restore on close or None, use a thread?)"""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode):
        return os.dup(fd), None, True
    access = os.O_WRONLY if writable else os.O_RDONLY
    try:
        own = os.open(f"/proc/self/fd/{fd}",
                      access | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        return own, None, False
    except OSError:
        pass
    # Sockets (and anything /proc will not reopen): share the description, restore its flags.
    import fcntl

    own = os.dup(fd)
    flags = fcntl.fcntl(own, fcntl.F_GETFL)
    fcntl.fcntl(own, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return own, flags, False
