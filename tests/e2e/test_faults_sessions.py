"""Faults with sessions open: the daemon killed (SIGKILL) and restarted, the daemon stopped
(SIGTERM), a box stopped. Every client ends promptly with one clear line and a non-zero status,
and no process of those sessions is left in the box."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from bed.term import Terminal
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e

BOX = "alice-faults"
GONE = b"boxd went away; the session was ended"
HUNG_UP = 128 + signal.SIGHUP


def _until(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _alive(pid: int) -> bool:
    """A process that has not ended (a zombie has: only its parent has yet to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in found.split() if _alive(int(p))]


def _warm_launchers(container_id: str) -> list[int]:
    """Launchers waiting in this box: their parent is the conmon of an exec in that container."""
    found = []
    for pid in _pids("boxd-warm boxd-warm-"):
        try:
            ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
            if container_id in open(f"/proc/{ppid}/cmdline").read().split("\0"):
                found.append(pid)
        except (OSError, IndexError):
            continue
    return found


class Sessions:
    """A `boxctl run` of a sleep and an `enter` whose shell has a job in the background, both
    of alice's in BOX; every process they own in the box is known by pid."""

    def __init__(self, boxd, alice) -> None:
        seconds = 200000 + os.getpid() % 100000
        self.run_marker = f"^sleep {seconds}$"
        self.job_marker = f"^sleep {seconds + 1}$"
        # The client's own argv says $((N - 1 + 1)): finding the marker cannot mean boxctl.
        self.run = subprocess.Popen(
            boxctl_argv(boxd, alice["name"], "run", BOX, "--", "sh", "-c",
                        f"exec sleep $(({seconds - 1} + 1))"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, cwd="/")
        self.term = Terminal(boxctl_argv(boxd, alice["name"], "enter", BOX), cwd=alice["home"])
        self.term.read_until("$ ", timeout=60)
        # The echo of what was typed says -u""p: only the shell's answer says -up.
        self.term.send(f'sleep $(({seconds} + 1)) & echo shell-$$-u""p\r')
        shell = re.search(rb"shell-(\d+)-up", self.term.read_until("-up", timeout=60))
        assert shell, self.term.output
        self.shell = int(shell.group(1))
        assert _until(lambda: _pids(self.run_marker) and _pids(self.job_marker), 60), \
            "the sessions' commands never started"
        self.processes = [self.shell, *_pids(self.run_marker), *_pids(self.job_marker)]

    def left(self) -> list[int]:
        return [pid for pid in self.processes if _alive(pid)]

    def close(self) -> None:
        if self.run.poll() is None:
            os.killpg(self.run.pid, signal.SIGKILL)
        self.run.wait()
        self.term.close()


@pytest.fixture
def faults_box(boxd_bed, alice) -> Iterator[str]:
    user = alice["name"]
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", [BOX, "", {}], user=user)
    assert "error" not in reply, reply
    try:
        assert boxd_bed.box(BOX, "Start", user=user) == {"body": []}
        yield BOX
    finally:
        if not boxd_bed.daemon.alive():
            boxd_bed.daemon.start()
        boxd_bed.box(BOX, "Remove", "b", [True], user=user)


@pytest.fixture
def sessions(boxd_bed, alice, faults_box) -> Iterator[Sessions]:
    opened = Sessions(boxd_bed, alice)
    try:
        yield opened
    finally:
        opened.close()


def _one_line(stderr: bytes) -> bytes:
    lines = stderr.decode(errors="replace").strip("\r\n").splitlines()
    assert len(lines) == 1, stderr
    return lines[0].encode()


def test_daemon_killed_and_restarted_leaves_nothing_running(boxd_bed, alice, sessions):
    user = alice["name"]
    env = {"$v": ["a{ss}", {"FAULTS": "kept"}]}
    assert boxd_bed.box(BOX, "Configure", "a{sv}", [{"env": env}], user=user) == {"body": []}
    assert "error" not in boxd_bed.box(BOX, "ExportBin", "s", ["/usr/bin/nproc"], user=user)
    settings = boxd_bed.box(BOX, "GetSettings", user=user)["body"][0]
    exports = boxd_bed.box(BOX, "ListExports", user=user)["body"][0]
    box_id = boxd_bed.podman.inspect(BOX)["Id"]
    # Both kinds of session were asked for: warm launchers of both wait in the box.
    assert _until(lambda: len(_warm_launchers(box_id)) >= 2, 60), _warm_launchers(box_id)
    leftovers = sessions.processes + _warm_launchers(box_id)
    log_offset = len(boxd_bed.daemon.log_events("leftover_ended"))

    killed = time.monotonic()
    boxd_bed.daemon.kill(signal.SIGKILL)
    try:
        # Both clients say so at once, in one line, with a hang-up's status.
        _, stderr = sessions.run.communicate(timeout=30)
        print(f"a client noticed the daemon's death after {time.monotonic() - killed:.3f} s")
        assert sessions.run.returncode == HUNG_UP
        assert GONE in _one_line(stderr)
        assert sessions.term.wait(30) == HUNG_UP
        assert GONE in sessions.term.output, sessions.term.output
    finally:
        boxd_bed.daemon.start()

    # The new daemon finds what its predecessor left in the box and hangs it up.
    assert _until(lambda: not [p for p in leftovers if _alive(p)], 60), \
        [p for p in leftovers if _alive(p)]
    # (Said once podman has booked their ends, a moment after they ended.)

    def ended() -> set[str]:
        return {e["kind"] for e in boxd_bed.daemon.log_events("leftover_ended")[log_offset:]
                if e["box"] == BOX}

    assert _until(lambda: ended() >= {"session", "warm"}, 60), ended()
    # Boxes, settings and exports are as they were; sessions work again.
    listed = boxd_bed.manager("ListBoxes", user=user)["body"][0]
    assert [b[4] for b in listed if b[1] == BOX] == ["running"]
    assert boxd_bed.box(BOX, "GetSettings", user=user)["body"][0] == settings
    assert boxd_bed.box(BOX, "ListExports", user=user)["body"][0] == exports
    result = subprocess.run(boxctl_argv(boxd_bed, user, "run", BOX, "--", "echo", "back"),
                            capture_output=True, timeout=120, cwd="/")
    assert (result.returncode, result.stdout) == (0, b"back\n"), result.stderr


def test_daemon_stopped_hangs_up_its_sessions(boxd_bed, alice, sessions):
    boxd_bed.daemon.kill(signal.SIGTERM)
    try:
        _, stderr = sessions.run.communicate(timeout=30)
        assert sessions.run.returncode == HUNG_UP
        assert b"boxd is stopping; the session was hung up" in _one_line(stderr)
        assert sessions.term.wait(30) == HUNG_UP
        assert b"boxd is stopping; the session was hung up" in sessions.term.output
        assert GONE not in sessions.term.output  # told once, by boxd
        assert _until(lambda: not sessions.left(), 30), sessions.left()
    finally:
        boxd_bed.daemon.start()


def test_stop_ends_the_sessions_then_the_box(boxd_bed, alice, sessions):
    user = alice["name"]
    said = b"box alice-faults was stopped; the session was hung up"
    stop = subprocess.run(boxctl_argv(boxd_bed, user, "stop", BOX), capture_output=True,
                          timeout=120, cwd="/")
    assert (stop.returncode, stop.stderr) == (0, b"")
    _, stderr = sessions.run.communicate(timeout=30)
    assert sessions.run.returncode in (HUNG_UP, 128 + signal.SIGTERM)
    assert said in _one_line(stderr)
    assert sessions.term.wait(30) in (HUNG_UP, 128 + signal.SIGTERM)
    assert said in sessions.term.output, sessions.term.output
    assert not sessions.left()
    assert boxd_bed.podman.inspect(BOX)["State"]["Status"] == "exited"
    listed = boxd_bed.manager("ListBoxes", user=user)["body"][0]
    assert [b[4] for b in listed if b[1] == BOX] == ["stopped"]
    # And it starts again, and runs commands.
    start = subprocess.run(boxctl_argv(boxd_bed, user, "start", BOX), capture_output=True,
                           timeout=120, cwd="/")
    assert start.returncode == 0, start.stderr
    result = subprocess.run(boxctl_argv(boxd_bed, user, "run", BOX, "--", "echo", "again"),
                            capture_output=True, timeout=120, cwd="/")
    assert (result.returncode, result.stdout) == (0, b"again\n"), result.stderr
