"""Drive a program on a real pseudo-terminal, as a person at a terminal would."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time


class Terminal:
    def __init__(self, argv: list[str], rows: int = 24, cols: int = 80,
                 env: dict[str, str] | None = None, cwd: str = "/") -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)

        def become_session_leader() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     preexec_fn=become_session_leader, close_fds=True,
                                     env={**os.environ, "TERM": "xterm-256color", **(env or {})})
        os.close(slave)
        self.output = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes | str) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def read_until(self, marker: bytes | str, timeout: float = 20) -> bytes:
        """Read until `marker` shows up in what was printed since the last match."""
        marker = marker.encode() if isinstance(marker, str) else marker
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{marker!r} never appeared; the screen had:\n"
                                   f"{self.output[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"the program closed the terminal before {marker!r}; "
                                   f"it printed:\n{self.output[-2000:]!r}")
                self.output += chunk
        head, _, tail = self.output.partition(marker)
        self.output = tail
        return head + marker

    def ask_until(self, line: str, marker: bytes | str, tries: int = 40) -> bytes:
        """Type `line` until `marker` shows up: for state that changes behind the program's
        back (a resize travels SIGWINCH -> bus -> daemon -> podman, unordered with typing)."""
        for _ in range(tries - 1):
            self.send(line)
            try:
                return self.read_until(marker, 0.5)
            except TimeoutError:
                pass
        self.send(line)
        return self.read_until(marker)

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read_ready(0.05)
        status = self.proc.wait(max(0.1, deadline - time.monotonic()))
        # What was written before the program ended is in the terminal's buffer; take it all
        # (others, like the daemon, may still hold the terminal, so no end-of-file to wait for).
        while self._read_ready(0.05):
            pass
        return status

    def _read_ready(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        self.output += chunk
        return bool(chunk)

    def attrs(self) -> list:
        return termios.tcgetattr(self.master)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def close(self) -> None:
        self.kill()
        self.proc.wait()
        os.close(self.master)
