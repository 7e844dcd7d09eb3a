"""Knowing when a starting box is ready, and why not.

The entry point says so twice. Its log line ("boxd-init: ready TOKEN", or "boxd-init: error: WHY"
before it exits) is the record, and carries what it printed on the way (package installs,
hooks); but podman's log follow delivers new lines only every quarter second. So it also writes
"ready TOKEN" into a FIFO in the box's config dir, which boxd holds open while the box starts:
that arrives at once. The FIFO needs nothing new in the box (the config dir is mounted already;
a FIFO can be written on a read-only mount) and a read-write open of it never blocks, so a box
started by podman alone, with nobody listening, is not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from boxd import errors, log, podman

READY_LINE = b"boxd-init: ready"
ERROR_PREFIX = b"boxd-init: error: "
PIPE_NAME = "ready"
CATCH_UP_SECONDS = 2.0
CATCH_UP_READS = 20

_log = log.get("boxd.readiness")


class ReadyPipe:
    """The FIFO `<config dir>/ready`: the box's root may write it (group = the box root's host
    gid, as for the config dir), boxd reads it while the box starts, looking for one line.
    What a box writes there is bounded work for boxd: a chunk per wake-up, no buffer beyond a
    line's length, and no reading at all once the line has come."""

    def __init__(self, config_dir: Path, token: str) -> None:
        self._path = config_dir / PIPE_NAME
        self._gid = config_dir.stat().st_gid
        self._wanted = b"\nready " + token.encode() + b"\n"
        self._fd = -1
        self._seen = b"\n"  # the tail of what was read, enough to find the line across chunks
        self._signalled = asyncio.Event()

    def __enter__(self) -> ReadyPipe:
        try:
            self._fd = self._open()
        except OSError as exc:
            # Not fatal: the log says ready too, only later.
            _log.warning("ready_pipe_failed", path=str(self._path), error=str(exc))
            return self
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self._path, 0o600)
        if not stat.S_ISFIFO(os.lstat(self._path).st_mode):
            raise OSError(f"{self._path} is not a FIFO")
        if os.geteuid() == 0:
            os.chown(self._path, 0, self._gid)
        os.chmod(self._path, 0o660)  # read-write: the writer's open must not block
        # Read-write here too: with no writer the read end would otherwise see EOF at once.
        fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # Whatever an earlier start left unread (a pipe holds 64 KiB at most; nobody writes to
        # a stopped box's pipe, but do not bet a loop on it).
        with contextlib.suppress(BlockingIOError):
            for _ in range(16):
                if not os.read(fd, 65536):
                    break
        return fd

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        self._seen = (self._seen + chunk)[-(len(self._wanted) + len(chunk)):]
        if self._wanted in self._seen:
            self._signalled.set()
            asyncio.get_running_loop().remove_reader(self._fd)
            return
        self._seen = self._seen[-len(self._wanted):]

    async def wait(self) -> None:
        """Until the entry point writes "ready TOKEN" (lines of earlier starts are passed over)."""
        await self._signalled.wait()


async def await_ready(client: podman.PodmanClient, name: str, token: str, since: float,
                      silence_timeout: float, pipe: ReadyPipe,
                      on_output: Callable[[str], None] | None = None) -> str:
    """Return when the box's entry point is ready, saying how it told ("pipe" or "log"); raise
    StartFailed or Timeout with its reasons. `on_output` gets each line it printed on the way,
    all of them, in order."""
    follower = _LogFollower(client, name, token, since, silence_timeout, on_output)
    following = asyncio.ensure_future(follower.follow())
    signalled = asyncio.ensure_future(pipe.wait())
    try:
        await asyncio.wait({following, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (following, signalled):
            if not task.done():
                task.cancel()
                # Not `await task`: our own cancellation must not be mistaken for the task's.
                await asyncio.wait({task})
    if following.done() and not following.cancelled():
        following.result()  # ready, or raises why not
        # It passed on every line up to ready; a tie (both within one turn of the loop) is
        # still the pipe's, which did tell.
        return "pipe" if signalled.done() and not signalled.cancelled() else "log"
    if on_output is not None:
        await follower.catch_up()
    return "pipe"


class _LogFollower:
    def __init__(self, client: podman.PodmanClient, name: str, token: str, since: float,
                 silence_timeout: float, on_output: Callable[[str], None] | None) -> None:
        self._client = client
        self._name = name
        self._ready = READY_LINE + b" " + token.encode()
        self._since = since
        self._silence_timeout = silence_timeout
        self._on_output = on_output
        self._seen = 0  # log lines of this start looked at so far
        self._last: list[str] = []

    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with (asyncio.timeout(self._silence_timeout) as silence,
                        contextlib.aclosing(self._lines(follow=True)) as lines):
                async for line in lines:
                    silence.reschedule(loop.time() + self._silence_timeout)
                    if self._take(line):
                        return
        except TimeoutError:
            raise errors.Timeout(
                f"box {self._name!r} said nothing for {self._silence_timeout:g} s and is not "
                f"ready{self._last_output()}") from None
        # The log ended: the entry point exited without saying ready.
        status = await self._client.inspect_container(self._name)
        code = (status.get("State") or {}).get("ExitCode")
        raise errors.StartFailed(
            f"box {self._name!r} exited (status {code}) before it was ready{self._last_output()}")

    async def catch_up(self) -> None:
        """After the pipe said ready: pass on the lines the lagging follow has not passed on
        yet, up to the ready line (conmon may take a moment to write the last ones). The box is
        ready either way: trouble here costs output, never the start."""
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                for _attempt in range(CATCH_UP_READS):
                    if await self._read_once_more():
                        return
                    await asyncio.sleep(0.02)
        except (TimeoutError, podman.PodmanError) as exc:
            _log.info("start_output_incomplete", box=self._name, error=str(exc) or "timeout")

    async def _read_once_more(self) -> bool:
        """Read this start's log from its beginning, passing on what is new; True once the
        ready line was among it."""
        already, position = self._seen, 0
        async with contextlib.aclosing(self._lines(follow=False)) as lines:
            async for line in lines:
                position += 1
                if position > already and self._take(line):
                    return True
        return False

    def _take(self, line: bytes) -> bool:
        """Look at the next line of this start's log; True once it says ready."""
        self._seen += 1
        if line == self._ready:
            return True
        if line.startswith(READY_LINE):
            return False  # another start's (a restart within the same instant)
        if line.startswith(ERROR_PREFIX):
            raise errors.StartFailed(f"box {self._name!r} failed to start: "
                                     f"{line[len(ERROR_PREFIX):].decode(errors='replace')}")
        text = line.decode(errors="replace")
        self._last = [*self._last[-4:], text]
        if self._on_output is not None:
            self._on_output(text)
        return False

    async def _lines(self, follow: bool) -> AsyncIterator[bytes]:
        logs = self._client.container_logs(self._name, since=self._since, follow=follow)
        async with contextlib.aclosing(logs):
            async for _stream, line in logs:
                yield line

    def _last_output(self) -> str:
        return f"; its last output: {' | '.join(self._last)}" if self._last else ""
