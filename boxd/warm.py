"""Warm execs: a shell already started in a box, waiting to become the next session.

Starting a podman exec costs most of a session's start (conmon and runc joining the box's
namespaces, ~60-90 ms here). Once a kind of session (box, user, tty) has been asked for, boxd keeps
a few execs of that kind started ahead. Each runs a small sh launcher that reports ready and then
blocks reading one line from its stdin. A spawn that finds one writes its request (environment,
directory, command, as quoted shell words) as that line, and the launcher execs the command in
place: the exec's pid, exit status, resize and stdio become the session's own. Entries close after
a while unused, and die with their box (podman's events about it, and an inspect before one is
handed out, make sure none outlives its container). Knows podman; knows nothing about boxes'
lifecycles or D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import struct
import time
from dataclasses import dataclass, field

from boxd import log, podman

_log = log.get("boxd.warm")

# The launcher: make a terminal raw and silent so the request line is neither echoed nor cooked,
# say ready, read the request, restore the terminal, and run the request (which ends in the spawn
# trampoline's `set --`). No stty in the box means no warm ttys there: exit before saying ready.
LAUNCHER = r"""
if [ -t 0 ]; then
    __boxd_tty=$(stty -g 2>/dev/null) && stty raw -echo 2>/dev/null || exit 0
fi
! command -v __boxd_login_env >/dev/null 2>&1 || __boxd_login=$(__boxd_login_env)
printf '%s' "$1"
IFS= read -r __boxd_request || exit 0
[ -z "${__boxd_tty:-}" ] || stty "$__boxd_tty"
__boxd_nl='
'
eval "$__boxd_request"
unset __boxd_tty __boxd_request __boxd_nl
"""

# Variables the shell can export, but not the launcher's own.
_NAME = re.compile(r"(?!__boxd_)[A-Za-z_][A-Za-z0-9_]*\Z")
_FRAME = struct.Struct(">BxxxI")
# dash reads a request a byte at a time: big ones go the ordinary way.
MAX_REQUEST_BYTES = 64 * 1024
READY_TIMEOUT = 10.0
# Its $0 in the box: how a restarted boxd finds its predecessor's launchers (sessions.exec_kind).
WARM_NAME = "boxd-warm"
BROKEN_RETRY_SECONDS = 300.0


def _word(value: str) -> str:
    """`value` as one shell word on one line (newlines come from $__boxd_nl)."""
    return "'" + value.replace("'", "'\\''").replace("\n", "'\"$__boxd_nl\"'") + "'"


def request_line(env: dict[str, str], trampoline_args: list[str]) -> bytes | None:
    """The line that turns a waiting launcher into the requested process, or None when the
    request cannot be said that way (a variable name the shell cannot export, or too big)."""
    if not all(_NAME.match(key) for key in env):
        return None
    parts = []
    if env:
        parts.append("export " + " ".join(_word(f"{k}={v}") for k, v in env.items()) + ";")
    parts.append("set -- " + " ".join(_word(a) for a in trampoline_args))
    line = (" ".join(parts) + "\n").encode("utf-8", "surrogateescape")
    return line if len(line) <= MAX_REQUEST_BYTES else None


@dataclass(frozen=True)
class WarmKey:
    box: str
    user: str  # "uid:gid" inside the box
    tty: bool


@dataclass
class _Entry:
    exec_id: str
    stream: podman.ExecStream
    # Wall-clock time of its start, before it read the user's login environment.
    started: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        return not (self.stream.reader.at_eof() or self.stream.writer.is_closing())

    def close(self) -> None:
        # A tty never sees EOF from us: tell the launcher to leave instead.
        with contextlib.suppress(OSError, RuntimeError):
            self.stream.writer.write(b"exit 0\n")
        self.stream.writer.close()


@dataclass
class _Kind:
    entries: list[_Entry] = field(default_factory=list)
    filler: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    # Until then this box is taken not to host warm execs of this kind (e.g. it has no stty).
    broken_until: float = 0.0


class WarmPool:
    def __init__(self, client: podman.PodmanClient, script: str, size: int,
                 idle_seconds: float, prelude: str = "") -> None:
        """`script` runs once a request came; `prelude` is sh defined before the launcher waits
        (a `__boxd_login_env` function there is run ahead, see sessions.LOGIN_ENV)."""
        self._podman = client
        self._script = prelude + LAUNCHER + script
        self._size = size
        self._idle = idle_seconds
        self._kinds: dict[WarmKey, _Kind] = {}
        self._starting: set[str] = set()

    async def take(self, key: WarmKey, fresh_after: float = 0.0
                   ) -> tuple[str, podman.ExecStream] | None:
        """A started exec of this kind if one is ready, started after `fresh_after` (when the
        user's login files last changed) and podman still runs it; either way, keep this kind
        warm. Refills wait for refill() (the session's end) unless none is left: podman holds
        the box's lock while it starts an exec, and a refill racing the session would delay its
        exit."""
        if self._size <= 0:
            return None
        kind = self._kinds.setdefault(key, _Kind())
        loop = asyncio.get_running_loop()
        if loop.time() < kind.broken_until:
            return None
        if kind.expiry is not None:
            kind.expiry.cancel()
        kind.expiry = loop.call_later(self._idle, self._expire, key)
        entry = None
        while kind.entries and entry is None:
            entry = kind.entries.pop(0)
            if not (entry.alive and entry.started > fresh_after):
                entry.close()
                entry = None
        if not kind.entries:
            self._refill(key, kind)
        if entry is None:
            return None
        # Checked, not assumed: a container stopped behind boxd's back can leave its execs'
        # connections open, and podman forgets them (404) once it cleans the container up.
        try:
            running = bool((await self._podman.exec_inspect(entry.exec_id)).get("Running"))
        except podman.PodmanUnavailable:
            entry.close()  # podman is away: so is this exec's stream, and a cold one would wait
            raise
        except podman.ApiError:
            running = False
        if not running or not entry.alive:
            _log.info("warm_stale", box=key.box, exec_id=entry.exec_id)
            entry.close()
            self.forget_box(key.box)  # its siblings went with the same container
            return None
        return entry.exec_id, entry.stream

    def refill(self, key: WarmKey) -> None:
        """A session of this kind ended: top its kind up again."""
        kind = self._kinds.get(key)
        if kind is not None:
            self._refill(key, kind)

    def _refill(self, key: WarmKey, kind: _Kind) -> None:
        if kind.filler is None or kind.filler.done():
            kind.filler = asyncio.create_task(self._fill(key, kind))

    def exec_ids(self) -> set[str]:
        """The launchers ready now and those being started."""
        return {e.exec_id for kind in self._kinds.values() for e in kind.entries} | self._starting

    def forget_box(self, box: str) -> None:
        """The box stopped or went away: its warm execs are gone or about to be."""
        for key in [k for k in self._kinds if k.box == box]:
            _log.debug("warm_dropped", box=box, tty=key.tty, ready=len(self._kinds[key].entries))
            self._drop(key)

    async def release_box(self, box: str, timeout: float = 15.0) -> None:
        """Close a box's warm execs and wait until they are gone: podman refuses to stop a
        container ("has active exec sessions") until their ends are booked."""
        entries = [e for k, kind in self._kinds.items() if k.box == box for e in kind.entries]
        self.forget_box(box)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for entry in entries:
                    with contextlib.suppress(OSError):
                        while await entry.stream.reader.read(65536):
                            pass
                    with contextlib.suppress(podman.PodmanError):
                        await self._podman.wait_exec_ended(entry.exec_id, timeout)

    def close(self) -> None:
        for key in list(self._kinds):
            self._drop(key)

    def _expire(self, key: WarmKey) -> None:
        _log.debug("warm_expired", box=key.box, tty=key.tty)
        self._drop(key)

    def _drop(self, key: WarmKey) -> None:
        kind = self._kinds.pop(key, None)
        if kind is None:
            return
        if kind.filler is not None:
            kind.filler.cancel()
        if kind.expiry is not None:
            kind.expiry.cancel()
        for entry in kind.entries:
            entry.close()

    async def _fill(self, key: WarmKey, kind: _Kind) -> None:
        while self._kinds.get(key) is kind and len(kind.entries) < self._size:
            try:
                entry = await self._start(key)
            except (podman.PodmanError, OSError, TimeoutError) as exc:
                # Typically the box is stopping; the next spawn tries again.
                _log.debug("warm_failed", box=key.box, tty=key.tty, error=str(exc))
                return
            except Exception:
                _log.exception("warm_crashed", box=key.box, tty=key.tty)
                return
            if isinstance(entry, bytes):
                kind.broken_until = asyncio.get_running_loop().time() + BROKEN_RETRY_SECONDS
                _log.info("warm_unsupported", box=key.box, tty=key.tty,
                          said=entry[:200].decode(errors="replace"))
                return
            if self._kinds.get(key) is not kind:
                entry.close()
                return
            kind.entries.append(entry)

    async def _start(self, key: WarmKey) -> _Entry | bytes:
        """A launcher ready for a request, or what it said instead of its marker."""
        marker = "boxd-warm-" + secrets.token_hex(8)
        exec_id = await self._podman.exec_create(key.box, {
            "Cmd": ["/bin/sh", "-c", self._script, WARM_NAME, marker],
            "Tty": key.tty, "User": key.user, "WorkingDir": "/",
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
            "DetachKeys": "",
        })
        self._starting.add(exec_id)
        try:
            stream = await self._podman.exec_start(exec_id, key.tty, 24, 80)
            entry = _Entry(exec_id, stream)
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    said = await _read_marker(stream, key.tty, len(marker))
            except BaseException:
                entry.close()
                raise
        finally:
            self._starting.discard(exec_id)
        if said != marker.encode():
            entry.close()
            return said
        return entry


async def _read_marker(stream: podman.ExecStream, tty: bool, size: int) -> bytes:
    """The launcher's first output (the marker), or less when it ended without saying it. Leaves
    nothing behind: the launcher writes nothing more until it runs the request."""
    buffer = bytearray(stream.initial)
    stream.initial = b""
    said = bytearray()
    while True:
        if tty:
            said += buffer
            buffer.clear()
        else:
            while len(buffer) >= _FRAME.size:
                kind, length = _FRAME.unpack_from(buffer)
                if len(buffer) < _FRAME.size + length:
                    break
                if kind == 1:  # stdout; conmon itself may talk on stderr (debug level)
                    said += buffer[_FRAME.size:_FRAME.size + length]
                del buffer[:_FRAME.size + length]
        if len(said) >= size:
            return bytes(said)
        data = await stream.reader.read(65536)
        if not data:
            return bytes(said)
        buffer += data
