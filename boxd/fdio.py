"""Async reads and writes on file descriptors handed to boxd by its callers (terminals' PTYs,
pipes, sockets, files).

A caller's fd shares its open file description with the caller, so setting O_NONBLOCK on it would
change the caller's own stdin too. For pipes, FIFOs and pty slaves we open our own description of
the same object through /proc/self/fd and make only that one non-blocking; regular files cannot be
polled, so they are read and written in a worker thread.

boxd runs as root, and a re-open through /proc checks permissions again with root's rights: it is
done only with the access the caller's own description has (read for stdin, write for stdout and
stderr), and an fd without that access is refused (BadFd), never widened. O_PATH fds carry no
access at all and are refused. Other character devices are never re-opened: opening one runs its
driver's open(), which can do more than the caller's fd allows (/dev/ptmx makes a new terminal,
/dev/tty means the opener's terminal, root passes TIOCEXCL, a watchdog arms, a tape rewinds on
close); they share the caller's description, made non-blocking only while boxd uses it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import stat

from boxd.errors import BadFd

# Unix98 pty slaves (/dev/pts/N): majors 136-143.
_PTY_SLAVE_MAJORS = range(136, 144)


class FdStream:
    def __init__(self, fd: int, writable: bool, what: str = "a file descriptor") -> None:
        self.fd, self._restore_flags, self._threaded = _own_description(fd, writable, what)
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
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._restore_flags)
            except OSError:
                pass
        os.close(self.fd)


def _own_description(fd: int, writable: bool, what: str) -> tuple[int, int | None, bool]:
    """(our fd, flags to restore on close or None, use a thread?)"""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    access = flags & os.O_ACCMODE
    if flags & os.O_PATH:
        raise BadFd(f"{what} is an O_PATH descriptor, which allows neither reading nor writing")
    if writable and access == os.O_RDONLY:
        raise BadFd(f"{what} was opened read-only, and boxd needs to write to it")
    if not writable and access == os.O_WRONLY:
        raise BadFd(f"{what} was opened write-only, and boxd needs to read from it")
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return os.dup(fd), None, True
    if stat.S_ISFIFO(st.st_mode) or (stat.S_ISCHR(st.st_mode)
                                     and os.major(st.st_rdev) in _PTY_SLAVE_MAJORS):
        # Only the one direction boxd uses, which the caller's description allows (above).
        want = os.O_WRONLY if writable else os.O_RDONLY
        try:
            own = os.open(f"/proc/self/fd/{fd}",
                          want | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            pass  # e.g. a FIFO with no reader yet (ENXIO): share the description instead
        else:
            if os.fstat(own).st_ino == st.st_ino and os.fstat(own).st_dev == st.st_dev:
                return own, None, False
            os.close(own)
    # Sockets, other character devices, anything not re-opened: share the description, made
    # non-blocking while boxd uses it; its flags are restored on close.
    own = os.dup(fd)
    flags = fcntl.fcntl(own, fcntl.F_GETFL)
    fcntl.fcntl(own, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return own, flags, False
