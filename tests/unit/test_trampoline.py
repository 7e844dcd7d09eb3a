"""The spawn trampoline (the first thing a session runs in a box), under the shells boxes have:
a terminal gets the caller's size before the command runs, a missing directory falls back to
$HOME with a notice, and the command's argv and exit status pass through unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from boxd.sessions import TRAMPOLINE

SHELLS = [s for s in (["dash"], ["busybox", "sh"]) if shutil.which(s[0])]


def trampoline(shell: list[str], *args: str) -> list[str]:
    return [*shell, "-c", TRAMPOLINE, "boxd-spawn", *args]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_terminal_has_the_callers_size_before_the_command_runs(shell: list[str]) -> None:
    master, slave = os.openpty()  # a fresh terminal: 0 rows, 0 columns
    try:
        proc = subprocess.Popen(trampoline(shell, "/", "rows 33 cols 111", "--", "stty", "size"),
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                # busybox's stty reports $LINES/$COLUMNS over the terminal's size
                                env={"PATH": os.environ["PATH"]})
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(10) == 0
    finally:
        os.close(master)
    assert output.strip() == b"33 111"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_without_a_terminal_the_size_is_ignored_and_argv_passes_unchanged(shell: list[str],
                                                                          tmp_path) -> None:
    result = subprocess.run(trampoline(shell, str(tmp_path), "rows 33 cols 111", "--", "sh", "-c",
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
