"""The spawn trampoline (the first thing a session runs in a box), under the shells boxes have:
a terminal gets the caller's size before the command runs, a missing directory falls back to
$HOME with a notice, and the command's argv and exit status pass through unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from boxd.sessions import TRAMPOLINE
from boxd.warm import LAUNCHER, request_line

SHELLS = [s for s in (["dash"], ["busybox", "sh"]) if shutil.which(s[0])]


def trampoline(shell: list[str], *args: str) -> list[str]:
    return [*shell, "-c", TRAMPOLINE, "boxd-spawn", *args]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_terminal_has_the_callers_size_before_the_command_runs(shell: list[str]) -> None:
    output = on_a_terminal(trampoline(shell, "/", "33 111", "--", "stty", "size"))
    assert output.strip() == b"33 111"


def on_a_terminal(argv: list[str], typed: bytes = b"", after: bytes = b"") -> bytes:
    """Run `argv` on a fresh terminal (0 rows, 0 columns); once it printed `after`, type `typed`;
    return all it printed."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True,
                                # busybox's stty reports $LINES/$COLUMNS over the terminal's size
                                env={"PATH": os.environ["PATH"]})
        os.close(slave)
        output = b""
        if not after:
            os.write(master, typed)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            output += chunk
            if after and after in output:
                os.write(master, typed)  # as boxd does: only once the launcher said ready
                after = b""
        assert proc.wait(10) == 0, output
    finally:
        os.close(master)
    return output


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_warm_launcher_passes_the_size_on_too(shell: list[str]) -> None:
    """The warm path: the launcher reads the request line (trampoline arguments included)."""
    line = request_line({}, ["/", "33 111", "--", "stty", "size"])
    assert line is not None
    output = on_a_terminal([*shell, "-c", LAUNCHER + TRAMPOLINE, "boxd-warm", "MARK"], line,
                           after=b"MARK")
    assert output.startswith(b"MARK") and output[4:].strip() == b"33 111", output


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_without_a_terminal_the_size_is_ignored_and_argv_passes_unchanged(shell: list[str],
                                                                          tmp_path) -> None:
    result = subprocess.run(trampoline(shell, str(tmp_path), "33 111", "--", "sh", "-c",
                                       'pwd; printf "%s|" "$@"; exit 7', "x", "a b", "$HOME", ""),
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 7
    assert result.stdout == f"{tmp_path}\na b|$HOME||"
    assert result.stderr == ""


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_missing_directory_falls_back_to_home_with_a_notice(shell: list[str], tmp_path) -> None:
    result = subprocess.run(trampoline(shell, "/nonexistent/dir", "", "--", "pwd"),
                            capture_output=True, text=True, timeout=10,
                            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert result.returncode == 0
    assert result.stdout == f"{tmp_path}\n"
    assert result.stderr == (f"boxd: /nonexistent/dir does not exist in this box; "
                             f"starting in {tmp_path}\n")
