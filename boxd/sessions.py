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
import signal
import struct
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from boxd import errors, log, memory, podman
from boxd.fdio import FdStream
from boxd.process import PinnedProcess, pin_exec
from boxd.warm import WARM_NAME, WarmKey, WarmPool, request_line

_log = log.get("boxd.sessions")

# Runs first in the box: enter the caller's directory (or $HOME, saying so), give a terminal
# the caller's size, then exec the command, or the user's login shell from the box's passwd.
# Arguments: DIR "ROWS COLS"|"" --login-shell|-- ARGV...  (split without IFS: the caller sets env)
# (podman 4.3 applies an exec's starting size only after the process has started, so a command
# that asks at once could see 0x0 or 24x80; setting it here first closes that race.)
# The environment the user's login shell sets up (~/.profile, ~/.bash_profile: PATH additions
# such as ~/.cargo/bin), printed as `export` lines for eval, as Toolbx runs commands through the
# login shell. The profile's own output is cut off at a marker; one that hangs gives up after 5 s.
# Warm launchers run this before saying ready, so it costs a warm run nothing.
LOGIN_ENV = r"""
__boxd_login_env() {
    __boxd_shell=$(awk -F: -v u="$(id -u)" '$3 == u { print $7; exit }' /etc/passwd 2>/dev/null)
    [ -x "${__boxd_shell:-/nonexistent}" ] || return 0
    __boxd_t=
    ! command -v timeout >/dev/null 2>&1 || __boxd_t="timeout 5"
    __boxd_out=$(cd "${HOME:-/}" 2>/dev/null; $__boxd_t "$__boxd_shell" -l -c \
        'printf "\n%s\n" __boxd_env__; exec /bin/sh -c "export -p"' </dev/null 2>/dev/null)
    case $__boxd_out in
    *"
__boxd_env__
"*) printf '%s\n' "${__boxd_out#*
__boxd_env__
}" ;;
    esac
}
"""

TRAMPOLINE = LOGIN_ENV + r"""
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
# The login environment under the caller's own (which wins), but with the login's PATH unless
# the box's settings name one (__BOXD_PATH).
[ -n "${__boxd_login+x}" ] || __boxd_login=$(__boxd_login_env)
if [ -n "$__boxd_login" ]; then
    __boxd_mine=$(export -p)
    eval "$__boxd_login"
    __boxd_path=$PATH
    eval "$__boxd_mine"
    PATH=${__BOXD_PATH:-$__boxd_path}
fi
unset __boxd_login __boxd_mine __boxd_path __boxd_shell __boxd_out __boxd_t __BOXD_PATH
# A login's soft limit on open files (podman gives its execs its own, up to a million): what
# select(2)-era programs expect, as Toolbx boxes have the host's.
ulimit -S -n 1024 2>/dev/null || :
# What a shell would say (and its status), not sh's own words with this script's name and line.
case $1 in
*/*)
    if [ -d "$1" ]; then printf '%s: Is a directory\n' "$1" >&2; exit 126; fi
    if [ ! -e "$1" ]; then printf '%s: No such file or directory\n' "$1" >&2; exit 127; fi
    if [ ! -x "$1" ]; then printf '%s: Permission denied\n' "$1" >&2; exit 126; fi
    ;;
*)
    command -v "$1" >/dev/null 2>&1 || { printf '%s: command not found\n' "$1" >&2; exit 127; }
    ;;
esac
exec "$@"
"""

_FRAME = struct.Struct(">BxxxI")
_STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}
# What Exited reports for a process whose end boxd could not learn.
UNKNOWN_STATUS = 255
# How long a hung-up process may take to leave before it is killed, when no stop_timeout applies
# (its client left, boxd restarts or stops).
HANG_UP_GRACE = 3.0
# The name ($0) each kind of boxd exec runs under in a box: how a restarted boxd tells its
# predecessor's execs from anyone else's.
SPAWN_NAME = "boxd-spawn"


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
    # When the user's login files last changed: warm launchers that read them before are stale.
    login_files_changed: float = 0.0


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
    # Its caller left the bus: its fds are now someone else's terminal (the shell the client ran
    # from), where nothing more may land, podman's own "Error: read unixpacket ..." included.
    caller_gone: bool = False
    warm_key: WarmKey | None = None  # its kind, when it could start from a warm exec
    # Why boxd ended it, said in one line on its stderr once it is over ("box X was stopped").
    end_reason: str = ""
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _client: podman.PodmanClient | None = None
    # Its process, pinned by pidfd as soon as the exec runs (boxd.process): signals go there.
    _pinning: asyncio.Task[PinnedProcess | None] | None = None

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
        if not self.running:
            return
        process = await self.process()
        if process is not None and self.running:
            process.signal(signum)

    async def hang_up(self, grace: float = HANG_UP_GRACE, reason: str = "") -> str:
        """End the session like a closed terminal: SIGHUP to its process group, SIGKILL after
        `grace`; returns once its end is booked (or after a bound). `reason` is told to its
        caller on stderr. Returns how it ended: "gone", "hung up" or "killed"."""
        if reason and not self.end_reason:
            self.end_reason = reason
        how = "gone"
        if self.running and self._client is not None:
            try:
                how = await hang_up_exec(self._client, self.exec_id, grace)
            except podman.PodmanError as exc:  # no pid to signal; its stream ends with podman
                _log.warning("hang_up_failed", session=self.id, box=self.box, error=str(exc))
                how = "unknown"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 20):  # its output drained, its status booked
                await self._done.wait()
        return how

    async def process(self) -> PinnedProcess | None:
        """The session's process, pinned; None once it has ended or could not be pinned."""
        if self._pinning is None:
            return None
        try:
            process = await asyncio.shield(self._pinning)
        except asyncio.CancelledError:
            if self._pinning.cancelled():
                return None  # the session ended before its process was pinned
            raise
        except Exception:
            _log.exception("pinning_failed", session=self.id, box=self.box)
            return None
        return None if process is None or process.closed else process

    def _pin(self) -> None:
        if self._client is not None and self._pinning is None:
            self._pinning = asyncio.create_task(pin_exec(self._client, self.exec_id))

    def _unpin(self) -> None:
        """The session ended: let go of its process (the pidfd), now or once it is pinned."""
        if self._pinning is None:
            return

        def release(task: asyncio.Task[PinnedProcess | None]) -> None:
            if not task.cancelled() and task.exception() is None:
                process = task.result()
                if process is not None:
                    process.close()

        if self._pinning.done():
            release(self._pinning)
        else:
            self._pinning.add_done_callback(release)
            self._pinning.cancel()  # still looking for a process that has ended: stop


class SessionManager:
    def __init__(self, client: podman.PodmanClient, max_per_user: int, warm_size: int = 0,
                 warm_idle_seconds: float = 600.0) -> None:
        self._podman = client
        self._max_per_user = max_per_user
        self.warm = WarmPool(client, TRAMPOLINE, warm_size, warm_idle_seconds, prelude=LOGIN_ENV)
        self._sessions: dict[str, Session] = {}
        # A previous boxd's execs being ended (exec id -> box owner), and those tasks.
        self._leftovers: dict[str, int] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._closing = False  # boxd is stopping: no new sessions
        self._ids = itertools.count(1)
        self.on_exit: Callable[[Session], None] = lambda session: None

    def forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        memory.trim_soon()  # its buffers are free: give them back once the burst is over

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
        """Sessions of `uid` that still run, those of a previous boxd being ended included."""
        return (sum(1 for s in self._sessions.values() if s.caller_uid == uid and s.running)
                + sum(1 for owner in self._leftovers.values() if owner == uid))

    def _known_execs(self) -> set[str]:
        return {s.exec_id for s in self._sessions.values()} | self.warm.exec_ids()

    async def end_box(self, box: str, reason: str, grace: float) -> None:
        """End every process of every exec in a box, as a stop must: sessions are hung up (told
        `reason`), warm launchers let go, anything else (a leftover, someone's `podman exec`)
        hung up too; whatever outlives `grace` is killed. Returns once podman has booked every
        end, so that it will stop the container."""
        await self.warm.release_box(box)
        mine = {s.exec_id: s for s in self._sessions.values() if s.box == box and s.running}
        ends = [s.hang_up(grace, reason) for s in mine.values()]
        for found in await running_execs(self._podman, box):
            if found.exec_id not in mine:
                ends.append(self._end_exec(box, found, grace, "box_exec_ended"))
        await asyncio.gather(*ends)

    async def end_all(self, reason: str, grace: float = HANG_UP_GRACE) -> None:
        """boxd is stopping: hang up every session (a stopped boxd must orphan nothing)."""
        self._closing = True
        await asyncio.gather(*(s.hang_up(grace, reason) for s in list(self._sessions.values())
                               if s.running))

    async def end_leftovers(self, boxes: dict[str, int], grace: float = HANG_UP_GRACE) -> int:
        """At start: hang up the sessions and warm launchers a previous boxd left running in
        `boxes` (name -> owner uid). They count against their owner's limit until they are
        gone. Returns how many were found; ending them goes on in the background."""
        known = self._known_execs()
        found = 0
        for box, owner in boxes.items():
            try:
                execs = await running_execs(self._podman, box)
            except podman.PodmanError as exc:
                _log.warning("leftovers_unknown", box=box, error=str(exc))
                continue
            for leftover in execs:
                if leftover.kind == "other" or leftover.exec_id in known:
                    continue
                found += 1
                self._leftovers[leftover.exec_id] = owner
                task = asyncio.create_task(self._end_leftover(box, leftover, grace))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)
        return found

    async def _end_leftover(self, box: str, leftover: BoxExec, grace: float) -> None:
        try:
            await self._end_exec(box, leftover, grace, "leftover_ended")
        finally:
            self._leftovers.pop(leftover.exec_id, None)

    async def _end_exec(self, box: str, found: BoxExec, grace: float, event: str) -> None:
        try:
            how = await hang_up_exec(self._podman, found.exec_id, grace)
            if how != "gone":
                await self._podman.wait_exec_ended(found.exec_id)
        except podman.PodmanError as exc:
            _log.warning(event.replace("ended", "not_ended"), box=box, exec_id=found.exec_id,
                         error=str(exc))
            return
        _log.info(event, box=box, exec_id=found.exec_id, kind=found.kind, pid=found.pid,
                  how=how)

    async def spawn(self, request: SpawnRequest, caller_uid: int, caller_sender: str) -> Session:
        """Create and start the exec; returns once the process runs and its fds are pumped.
        The session pumps descriptions of its own: `request.fds` stay the caller's to close."""
        streams: dict[int, FdStream] = {}
        try:
            if self._closing:
                raise errors.Busy("boxd is stopping; try again once it is back")
            if self.count(caller_uid) >= self._max_per_user:
                raise errors.LimitReached(f"you have {self._max_per_user} sessions open "
                                          "already; close one first")
            for target, fd in request.fds.items():
                streams[target] = FdStream(fd, writable=target != 0, what=_STREAM_NAMES[target])
            height, width = _window_size(streams.get(0)) if request.tty else (0, 0)
            size = f"{height} {width}" if height and width else ""
            args = [request.cwd, size, "--login-shell" if request.login_shell else "--",
                    *request.argv]
            exec_id, stream, warm_key = await self._start_warm(request, args, streams, height,
                                                               width)
            started_warm = stream is not None
            if stream is None:
                config = {
                    "Cmd": ["/bin/sh", "-c", TRAMPOLINE, SPAWN_NAME, *args],
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
        session._pin()
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
        taken = await self.warm.take(key, request.login_files_changed)
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
            if session.end_reason and not session.caller_gone:
                await _tell(fds.get(2) or fds.get(1), session.end_reason, session.tty)
            if raw_restore is not None:
                raw_restore()
            for fd_stream in fds.values():
                fd_stream.close()
            session._unpin()
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

        async def emit(target: FdStream | None, data: bytes | memoryview) -> None:
            if not session.caller_gone:
                await _write(target, data)

        if session.tty:
            if stream.initial:
                await emit(out, stream.initial)
            while data := await stream.reader.read(1 << 20):
                await emit(out, data)
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
                await emit(err if kind == 2 else out, view[offset + _FRAME.size:end])
                offset = end
            view.release()
            del buffer[:offset]  # one move per read, not one per frame
            data = await stream.reader.read(1 << 20)
            if not data:
                return
            buffer += data


async def _tell(target: FdStream | None, reason: str, tty: bool) -> None:
    """One line for the caller, after the process's last output: why boxd ended the session."""
    line = f"boxd: {reason}; the session was hung up"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):  # a caller that does not read must not hold us up
            await _write(target, (f"\r\n{line}\r\n" if tty else f"{line}\n").encode())


# -- the execs running in a box, and ending them ---------------------------------------------

@dataclass(frozen=True)
class BoxExec:
    exec_id: str
    pid: int
    kind: str    # "session" (boxd's spawn), "warm" (a launcher, or a session started from one),
    #              or "other" (boxd's short captured runs, someone's `podman exec`)
    tty: bool


def exec_kind(info: dict[str, object]) -> str:
    """What an exec is, from podman's inspect of it: boxd names its shells ($0) by kind."""
    config = info.get("ProcessConfig")
    arguments = config.get("arguments") if isinstance(config, dict) else None
    if isinstance(arguments, list) and len(arguments) >= 3 and arguments[0] == "-c":
        return {SPAWN_NAME: "session", WARM_NAME: "warm"}.get(str(arguments[2]), "other")
    return "other"


async def running_execs(client: podman.PodmanClient, box: str) -> list[BoxExec]:
    """Every exec podman says runs in `box` now, with its host pid (boxes share the host's pid
    namespace). The one way boxd finds them: to stop a box, to end what a previous boxd left,
    to count."""
    data = await client.inspect_container(box)
    found = []
    for exec_id in data.get("ExecIDs") or []:
        try:
            info = await client.exec_inspect(str(exec_id))
        except podman.NotFound:
            continue  # ended and removed since
        pid = int(info.get("Pid") or 0)
        if info.get("Running") and pid > 1:
            config = info.get("ProcessConfig")
            tty = bool(config.get("tty")) if isinstance(config, dict) else False
            found.append(BoxExec(str(exec_id), pid, exec_kind(info), tty))
    return found


async def hang_up_exec(client: podman.PodmanClient, exec_id: str, grace: float) -> str:
    """Hang up an exec's process (see hang_up_process), pinned first so that a pid podman
    reported cannot have been reused by the time it is signalled."""
    try:
        info = await client.exec_inspect(exec_id)
    except podman.NotFound:
        return "gone"
    pid = int(info.get("Pid") or 0)
    if not info.get("Running"):
        return "gone"
    pinned = PinnedProcess.open(pid)
    if pinned is None:
        return "gone"
    try:
        # Pinned, then still podman's: the pidfd is this exec's process, not a successor's.
        again = await client.exec_inspect(exec_id)
        if not again.get("Running") or int(again.get("Pid") or 0) != pid:
            return "gone"
        return await pinned.hang_up_group(grace)
    finally:
        pinned.close()


async def hang_up_process(pid: int, grace: float) -> str:
    """SIGHUP a process and its process group, as a closing terminal does (each exec leads a
    session and group of its own: its children without job control share the group; an
    interactive shell passes the hang-up on to its jobs); SIGKILL them if it is still there
    after `grace`. Returns "gone" (it was), "hung up" or "killed"."""
    pinned = PinnedProcess.open(pid)
    if pinned is None:
        return "gone"
    try:
        return await pinned.hang_up_group(grace)
    finally:
        pinned.close()


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
