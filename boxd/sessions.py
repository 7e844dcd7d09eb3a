"""Sessions: a process in a box, attached to fds its caller handed over.

A session is a podman exec (created and started through the REST API) whose hijacked stream boxd
pumps to and from the caller's fds: in tty mode one raw stream, otherwise podman's framed
stdout/stderr, with EOF on the caller's stdin half-closing the stream. Knows podman and fds; knows
nothing about D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import signal
import struct
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from boxd import errors, log, podman
from boxd.fdio import FdStream
from boxd.warm import WarmKey, WarmPool, request_line

_log = log.get("boxd.sessions")

# Runs first in the box: enter the caller's directory (or $HOME, saying so), give a terminal
# the caller's size, then exec the command, or the user's login shell from the box's passwd.
# Arguments: DIR "ROWS COLS"|"" --login-shell|-- ARGV...  (split without IFS: the caller sets env)
# (podman 4.3 applies an exec's starting size only after the process has started, so a command
# that asks at once could see 0x0 or 24x80; setting it here first closes that race.)
TRAMPOLINE = r"""
cd "$1" 2>/dev/null || {
    printf 'boxd: %s does not exist in this box; starting in %s\n' "$1" "${HOME:-/}" >&2
    cd "${HOME:-/}" 2>/dev/null || cd /
}
shift
[ -z "$1" ] || ! [ -t 1 ] || stty rows "${1%% *}" cols "${1##* }" <&1 2>/dev/null || :
shift
if [ "$1" = --login-shell ]; then
    shell=$(awk -F: -v u="$(id -u)" '$3 == u { print $7; exit }' /etc/passwd 2>/dev/null)
    [ -x "${shell:-/nonexistent}" ] || shell=/bin/sh
    exec "$shell" -l
fi
shift
exec "$@"
"""

_FRAME = struct.Struct(">BxxxI")
# What Exited reports for a process whose end boxd could not learn.
UNKNOWN_STATUS = 255


@dataclass
class SpawnRequest:
    box: str
    argv: list[str]              # empty with login_shell
    cwd: str
    env: dict[str, str]
    fds: dict[int, int]          # 0/1/2 -> caller's fd (boxd's own duplicate, still its caller's)
    user: str                    # "uid:gid" inside the box
    tty: bool
    login_shell: bool = False


@dataclass
class Session:
    id: str
    box: str
    caller_uid: int
    caller_sender: str
    tty: bool
    started: float = field(default_factory=time.monotonic)
    exit_status: int | None = None
    # Why the process's own status is not known (podman went away, or forgot the exec):
    # Wait() answers with this error rather than a made-up status.
    error: errors.BoxdError | None = None
    exec_id: str = ""
    warm_key: WarmKey | None = None  # its kind, when it could start from a warm exec
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _client: podman.PodmanClient | None = None

    @property
    def running(self) -> bool:
        return self.exit_status is None

    async def wait(self) -> int:
        await self._done.wait()
        assert self.exit_status is not None
        if self.error is not None:
            raise self.error
        return self.exit_status

    async def resize(self, rows: int, cols: int) -> None:
        if not (0 < rows <= 10000 and 0 < cols <= 10000):
            raise errors.InvalidArgument("rows and cols must be between 1 and 10000")
        if not self.tty:
            raise errors.InvalidArgument("this session has no terminal to resize")
        if self.running and self._client is not None:
            with contextlib.suppress(podman.PodmanError):
                await self._client.exec_resize(self.exec_id, rows, cols)

    async def signal(self, signum: int) -> None:
        if signum not in signal.valid_signals() or signum == 0:
            raise errors.InvalidArgument(f"{signum} is not a signal number")
        await self._kill(signum)

    async def _kill(self, signum: int) -> None:
        if not self.running or self._client is None:
            return
        try:
            pid = int((await self._client.exec_inspect(self.exec_id)).get("Pid") or 0)
        except podman.PodmanError:
            return
        # The box shares the host's pid namespace: the exec's pid is a host pid.
        if pid > 1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    async def hang_up(self) -> None:
        """The caller is gone: hang up the process, and kill it if it does not listen."""
        await self._kill(signal.SIGHUP)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await self._done.wait()
                return
        await self._kill(signal.SIGKILL)


class SessionManager:
    def __init__(self, client: podman.PodmanClient, max_per_user: int, warm_size: int = 0,
                 warm_idle_seconds: float = 600.0) -> None:
        self._podman = client
        self._max_per_user = max_per_user
        self.warm = WarmPool(client, TRAMPOLINE, warm_size, warm_idle_seconds)
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self.on_exit: Callable[[Session], None] = lambda session: None

    def forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def podman_lost(self) -> None:
        """podman went away or stopped answering: the streams of every session and warm exec
        pass through it, so they are dead or frozen. End the sessions with a clear error now
        rather than leave their callers waiting on a podman that may never answer."""
        self.warm.close()
        for session in self._sessions.values():
            if session.running and session._task is not None and not session._task.done():
                session.error = errors.PodmanUnavailable(
                    "podman went away during this session; the command's exit status is "
                    "unknown")
                session._task.cancel()

    def of_sender(self, sender: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.caller_sender == sender]

    def count(self, uid: int) -> int:
        return sum(1 for s in self._sessions.values() if s.caller_uid == uid and s.running)

    async def spawn(self, request: SpawnRequest, caller_uid: int, caller_sender: str) -> Session:
        """Create and start the exec; returns once the process runs and its fds are pumped.
        The session pumps descriptions of its own: `request.fds` stay the caller's to close."""
        streams: dict[int, FdStream] = {}
        try:
            if self.count(caller_uid) >= self._max_per_user:
                raise errors.LimitReached(f"you have {self._max_per_user} sessions open "
                                          "already; close one first")
            for target, fd in request.fds.items():
                streams[target] = FdStream(fd, writable=target != 0)
            height, width = _window_size(streams.get(0)) if request.tty else (0, 0)
            size = f"{height} {width}" if height and width else ""
            args = [request.cwd, size, "--login-shell" if request.login_shell else "--",
                    *request.argv]
            exec_id, stream, warm_key = await self._start_warm(request, args, streams, height,
                                                               width)
            started_warm = stream is not None
            if stream is None:
                config = {
                    "Cmd": ["/bin/sh", "-c", TRAMPOLINE, "boxd-spawn", *args],
                    "Tty": request.tty, "User": request.user,
                    "AttachStdin": 0 in streams, "AttachStdout": True, "AttachStderr": True,
                    "Env": [f"{k}={v}" for k, v in request.env.items()],
                    "WorkingDir": "/",
                    # podman's default detach keys would swallow ctrl-p; boxd never detaches.
                    "DetachKeys": "",
                }
                exec_id = await self._podman.exec_create(request.box, config)
                stream = await self._podman.exec_start(exec_id, request.tty, height, width)
        except BaseException:
            for s in streams.values():
                s.close()
            raise
        session = Session(id=f"{next(self._ids)}", box=request.box, caller_uid=caller_uid,
                          caller_sender=caller_sender, tty=request.tty, exec_id=exec_id,
                          warm_key=warm_key, _client=self._podman)
        self._sessions[session.id] = session
        session._task = asyncio.create_task(self._run(session, stream, streams))
        _log.info("session_started", session=session.id, box=request.box, caller_uid=caller_uid,
                  tty=request.tty, warm=started_warm,
                  argv0=(request.argv or ["<login shell>"])[0])
        return session

    async def _start_warm(self, request: SpawnRequest, args: list[str],
                          streams: dict[int, FdStream], height: int, width: int
                          ) -> tuple[str, podman.ExecStream | None, WarmKey | None]:
        """Hand the request to a warm exec of its kind, if one is ready. Also returns the kind,
        when the request could use one, so that its end can top the kind up."""
        if request.tty and 0 not in streams:
            return "", None, None
        line = request_line(request.env, args)
        if line is None:
            return "", None, None
        key = WarmKey(request.box, request.user, request.tty)
        taken = await self.warm.take(key)
        if taken is None:
            return "", None, key
        exec_id, stream = taken
        if height and width:
            with contextlib.suppress(podman.PodmanError):
                await self._podman.exec_resize(exec_id, height, width)
        stream.writer.write(line)
        if 0 not in streams and stream.writer.can_write_eof():
            stream.writer.write_eof()  # as a cold exec without stdin: the process reads EOF
        return exec_id, stream, key

    async def _run(self, session: Session, stream: podman.ExecStream,
                   fds: dict[int, FdStream]) -> None:
        raw_restore = _make_raw(fds.get(0)) if session.tty else None
        feeder = asyncio.create_task(self._feed_input(session, stream, fds.get(0)))
        status = UNKNOWN_STATUS
        try:
            await self._drain_output(session, stream, fds)
            status = await exit_status(self._podman, session.exec_id)
        except asyncio.CancelledError:
            pass  # podman_lost() (which said why) or the daemon stopping
        except podman.PodmanUnavailable as exc:
            session.error = errors.PodmanUnavailable(
                "podman went away during this session; the command's exit status is unknown")
            _log.warning("session_lost", session=session.id, box=session.box, error=str(exc))
        except podman.NotFound as exc:
            session.error = errors.BoxdError(
                "podman no longer knows this session's process (was its box stopped outside "
                "boxd?); its exit status is unknown")
            _log.warning("session_lost", session=session.id, box=session.box, error=str(exc))
        except Exception:
            _log.exception("session_crashed", session=session.id, box=session.box)
        finally:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            stream.writer.close()
            if raw_restore is not None:
                raw_restore()
            for fd_stream in fds.values():
                fd_stream.close()
            session.exit_status = status
            session._done.set()
            if session.warm_key is not None and session.error is None:
                self.warm.refill(session.warm_key)
            _log.info("session_exited", session=session.id, box=session.box,
                      caller_uid=session.caller_uid, status=status,
                      duration_ms=round((time.monotonic() - session.started) * 1000, 1))
            try:
                self.on_exit(session)
            except Exception:
                _log.exception("session_exit_hook_failed", session=session.id)

    async def _feed_input(self, session: Session, stream: podman.ExecStream,
                          stdin: FdStream | None) -> None:
        if stdin is None:
            return
        try:
            while data := await stdin.read(1 << 20):
                stream.writer.write(data)
                await stream.writer.drain()
        except (ConnectionError, OSError):
            return
        if session.tty:
            # The terminal hung up: the process would get SIGHUP from a real one.
            await session._kill(signal.SIGHUP)
        elif stream.writer.can_write_eof():
            with contextlib.suppress(OSError):
                stream.writer.write_eof()  # the process sees EOF on its stdin

    async def _drain_output(self, session: Session, stream: podman.ExecStream,
                            fds: dict[int, FdStream]) -> None:
        out = fds.get(1)
        err = fds.get(2, out)
        if session.tty:
            if stream.initial:
                await _write(out, stream.initial)
            while data := await stream.reader.read(1 << 20):
                await _write(out, data)
            return
        buffer = bytearray(stream.initial)
        while True:
            view = memoryview(buffer)
            offset = 0
            while len(buffer) - offset >= _FRAME.size:
                kind, length = _FRAME.unpack_from(buffer, offset)
                end = offset + _FRAME.size + length
                if len(buffer) < end:
                    break
                await _write(err if kind == 2 else out, view[offset + _FRAME.size:end])
                offset = end
            view.release()
            del buffer[:offset]  # one move per read, not one per frame
            data = await stream.reader.read(1 << 20)
            if not data:
                return
            buffer += data


async def exit_status(client: podman.PodmanClient, exec_id: str) -> int:
    info = await client.wait_exec_ended(exec_id)
    if info is None:
        _log.warning("exit_status_unknown", exec_id=exec_id)
        return UNKNOWN_STATUS
    return int(info.get("ExitCode", UNKNOWN_STATUS))


async def _write(target: FdStream | None, data: bytes | memoryview) -> None:
    if target is None or target.closed:
        return
    try:
        await target.write(data)
    except (BrokenPipeError, OSError):
        target.close()  # the reader went away; keep draining so the process is not blocked


def _window_size(stdin: FdStream | None) -> tuple[int, int]:
    if stdin is None or not stdin.isatty():
        return 0, 0
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(stdin.fd, termios.TIOCGWINSZ,
                                                             b"\0" * 8))
        return rows, cols
    except OSError:
        return 0, 0


def _make_raw(stdin: FdStream | None) -> Callable[[], None] | None:
    """Put a caller's terminal in raw mode unless it is already (boxctl does it itself)."""
    if stdin is None or not stdin.isatty():
        return None
    try:
        saved = termios.tcgetattr(stdin.fd)
    except termios.error:
        return None
    if not saved[3] & (termios.ICANON | termios.ECHO):
        return None
    fd = stdin.fd
    tty.setraw(fd, termios.TCSANOW)

    def restore() -> None:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)

    return restore


async def run_captured(client: podman.PodmanClient, box: str, argv: list[str], user: str,
                       stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run a short command in a box, feed it `stdin`, collect its output: for boxd's own work in
    a box, done with the box user's rights rather than the daemon's."""
    exec_id = await client.exec_create(box, {"Cmd": argv, "User": user, "AttachStdout": True,
                                             "AttachStderr": True, "Tty": False,
                                             "AttachStdin": stdin is not None})
    stream = await client.exec_start(exec_id, tty=False)
    if stdin is not None:
        stream.writer.write(stdin)
        await stream.writer.drain()
        stream.writer.write_eof()
    buffer = bytearray(stream.initial)
    try:
        while data := await stream.reader.read(1 << 20):
            buffer += data
    finally:
        stream.writer.close()
    out, err = bytearray(), bytearray()
    offset = 0
    while len(buffer) - offset >= _FRAME.size:
        kind, length = _FRAME.unpack_from(buffer, offset)
        (err if kind == 2 else out).extend(buffer[offset + _FRAME.size:offset + _FRAME.size
                                                  + length])
        offset += _FRAME.size + length
    return await exit_status(client, exec_id), bytes(out), bytes(err)
