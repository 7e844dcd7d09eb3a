"""The readiness FIFO between the entry point and boxd, with the real shells that write it: the
very line boxd-init.sh runs, under dash and busybox ash."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from boxd.model import init_script_path
from boxd.readiness import PIPE_NAME, ReadyPipe

SHELLS = [["dash", "-c"], ["busybox", "sh", "-c"]]


def writer_line() -> str:
    """The entry point's own FIFO write, taken from the script itself."""
    script = init_script_path().read_text()
    line = re.search(r"^ *(printf 'ready %s\\n' .*\"\$ready_pipe\" \|\| :)$", script, re.M)
    assert line, "boxd-init.sh no longer writes the ready pipe the way this test expects"
    return line.group(1)


def write_ready(shell: list[str], pipe: Path, token: str) -> subprocess.CompletedProcess[str]:
    script = f'ready_pipe={pipe}; BOXD_START_TOKEN={token}; {writer_line()}; echo after'
    return subprocess.run([*shell, script], capture_output=True, text=True, timeout=5)


@pytest.fixture(params=SHELLS, ids=lambda argv: argv[0])
def shell(request):
    if not shutil.which(request.param[0]):
        pytest.skip(f"{request.param[0]} is not installed")
    return request.param


async def test_the_entry_points_line_reaches_boxd(tmp_path, shell):
    with ReadyPipe(tmp_path, "t2") as pipe:
        waiting = asyncio.ensure_future(pipe.wait())
        # A line of an earlier start (another token) is passed over.
        for token in ("t1", "t2"):
            result = await asyncio.to_thread(write_ready, shell, tmp_path / PIPE_NAME, token)
            assert (result.returncode, result.stdout) == (0, "after\n"), result.stderr
            await asyncio.sleep(0.05)
            assert waiting.done() == (token == "t2")
        await asyncio.wait_for(waiting, 5)
    assert (tmp_path / PIPE_NAME).stat().st_mode & 0o777 == 0o660


async def test_a_flooded_pipe_costs_boxd_bounded_work(tmp_path):
    """What a box writes there is the box's business: boxd stays responsive, keeps no more than
    a line, and still finds its line in the flood."""
    with ReadyPipe(tmp_path, "tok") as pipe:
        waiting = asyncio.ensure_future(pipe.wait())
        writer = await asyncio.create_subprocess_exec(
            "dash", "-c", f"yes junk | head -c 3000000 1<>{tmp_path / PIPE_NAME}; "
                          f"printf 'ready tok\\n' 1<>{tmp_path / PIPE_NAME}")
        ticks = 0
        while not waiting.done():
            await asyncio.sleep(0.001)  # the loop goes on serving others
            ticks += 1
            assert ticks < 20000
        assert ticks > 1
        assert len(pipe._seen) <= len(b"\nready tok\n") + 4096
        assert await asyncio.wait_for(writer.wait(), 5) == 0


def test_nobody_listening_does_not_hold_the_box_up(tmp_path, shell):
    """A box started by podman alone: the write returns at once and leaves nothing behind."""

    os.mkfifo(tmp_path / PIPE_NAME, 0o660)
    result = write_ready(shell, tmp_path / PIPE_NAME, "lonely")
    assert (result.returncode, result.stdout) == (0, "after\n"), result.stderr


def test_an_unwritable_pipe_does_not_end_the_entry_point(tmp_path, shell):
    (tmp_path / PIPE_NAME).mkdir()  # cannot be opened for writing
    result = write_ready(shell, tmp_path / PIPE_NAME, "x")
    assert (result.returncode, result.stdout) == (0, "after\n"), result.stderr


async def test_stale_lines_from_before_are_dropped(tmp_path):
    with ReadyPipe(tmp_path, "old"):
        pass
    # Someone writes while nobody listens, keeping it open: the next start must not see it.

    fd = os.open(tmp_path / PIPE_NAME, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, b"ready old\n")
    with ReadyPipe(tmp_path, "old") as pipe:
        os.close(fd)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipe.wait(), 0.2)


async def test_a_path_that_is_no_fifo_is_not_fatal(tmp_path):
    (tmp_path / PIPE_NAME).write_text("not a pipe")
    with ReadyPipe(tmp_path, "x") as pipe:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pipe.wait(), 0.1)
    assert (tmp_path / PIPE_NAME).read_text() == "not a pipe"
