"""podman's faults, seen from boxd's side: podman frozen for longer than podman_timeout, podman
killed and restarted during a session, a start cancelled half way, and boxes stopped behind
boxd's back. The podman service is the bed's own (the bed started it: these tests may freeze and
kill it); each test leaves it running, and the module gives the daemon back its usual config."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import bed
from boxd.paths import box_path
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e

ERR = "io.github.boxd1.Error."
# Short, so that a frozen podman is noticed within the test's patience; the daemon's default is
# 30 s.
PODMAN_TIMEOUT = 5.0
# What a slow CI machine may add on top of a bound the daemon promises.
MARGIN = 20.0


@pytest.fixture(scope="module")
def faults_bed(boxd_bed):
    """The bed's daemon, restarted with a short podman_timeout for this module only."""
    daemon = boxd_bed.daemon
    saved = dict(daemon.extra_config)
    daemon.stop()
    daemon.extra_config = {**saved, "podman_timeout": PODMAN_TIMEOUT}
    daemon.start()
    try:
        wait_available(boxd_bed, True)
        yield boxd_bed
    finally:
        boxd_bed.podman.ensure_running()
        daemon.stop()
        daemon.extra_config = saved
        daemon.start()
        wait_available(boxd_bed, True)


@pytest.fixture
def podman_back(faults_bed):
    """Whatever a test did to podman, it answers again afterwards and boxd knows it."""
    try:
        yield faults_bed
    finally:
        faults_bed.podman.ensure_running()
        wait_available(faults_bed, True)


def available(boxd) -> bool | None:
    result = boxd.busctl("get-property", "io.github.boxd1", "/io/github/boxd1",
                         "io.github.boxd1.Manager", "PodmanAvailable", check=False)
    return {"b true": True, "b false": False}.get(result.stdout.strip())


def wait_available(boxd, value: bool, timeout: float = 60) -> None:
    bed.wait_for(lambda: available(boxd) is value, timeout, f"PodmanAvailable {value}",
                 interval=0.1)


def box_state(boxd, name: str) -> str:
    result = boxd.busctl("get-property", "io.github.boxd1", box_path(name),
                         "io.github.boxd1.Box", "State")
    return result.stdout.strip().removeprefix("s ").strip('"')


def boxctl(boxd, user, *args, timeout=120):
    return subprocess.run(boxctl_argv(boxd, user, *args), capture_output=True, timeout=timeout,
                          cwd="/", stdin=subprocess.DEVNULL)


def new_box(boxd, user, name, options=None, start=True):
    # busybox: a small image, created well within the short podman_timeout (vfs copies it).
    reply = boxd.manager("CreateBox", "ssa{sv}", [name, bed.BUSYBOX_IMAGE, options or {}],
                         user=user)
    assert "error" not in reply, reply
    if start:
        assert boxd.box(name, "Start", user=user) == {"body": []}


def remove_box(boxd, user, name):
    boxd.box(name, "Remove", "b", [True], user=user)


def test_frozen_podman_fails_calls_in_time_and_comes_back(podman_back, alice):
    boxd, user = podman_back, alice["name"]
    new_box(boxd, user, "alice-frozen")
    boxd.podman.signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        reply = boxd.manager("ListImages", user=user)
        took = time.monotonic() - began
        assert reply.get("error") == ERR + "PodmanUnavailable", reply
        assert "did not answer within" in reply["message"], reply
        assert took < PODMAN_TIMEOUT + MARGIN, took
        # The probe notices a podman that keeps its socket open and says nothing.
        wait_available(boxd, False, timeout=PODMAN_TIMEOUT + MARGIN + 10)
        # What boxd knew of its boxes is stale: not "running" any more.
        listed = boxctl(boxd, user, "list")
        assert listed.returncode == 0, listed.stderr
        line = next(ln for ln in listed.stdout.decode().splitlines() if "alice-frozen" in ln)
        assert "unknown" in line and "running" not in line, line
        # A start never reports success without podman; it says why, in one line.
        began = time.monotonic()
        started = boxctl(boxd, user, "start", "alice-frozen")
        assert started.returncode != 0
        last = started.stderr.decode().strip().splitlines()[-1]
        assert "podman" in last and "Traceback" not in started.stderr.decode(), started.stderr
        assert time.monotonic() - began < PODMAN_TIMEOUT + MARGIN
        ran = boxctl(boxd, user, "run", "alice-frozen", "--", "true")
        assert ran.returncode != 0 and b"podman" in ran.stderr, ran.stderr
    finally:
        boxd.podman.signal(signal.SIGCONT)
    wait_available(boxd, True)
    ran = boxctl(boxd, user, "run", "alice-frozen", "--", "echo", "thawed")
    assert (ran.returncode, ran.stdout) == (0, b"thawed\n"), ran.stderr
    assert box_state(boxd, "alice-frozen") == "running"
    assert boxd.daemon.alive()
    remove_box(boxd, user, "alice-frozen")


def test_podman_killed_during_a_session_then_back(podman_back, alice):
    boxd, user = podman_back, alice["name"]
    new_box(boxd, user, "alice-killed")
    proc = subprocess.Popen(boxctl_argv(boxd, user, "run", "alice-killed", "--", "sh", "-c",
                                        "echo started; exec sleep 300"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/", start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        boxd.podman.kill()
        _out, err = proc.communicate(timeout=60)
        # A clear error, not a silent 255.
        assert proc.returncode not in (0, 255), (proc.returncode, err)
        assert b"podman" in err, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert boxd.daemon.alive()
    boxd.podman.ensure_running()
    wait_available(boxd, True)
    ran = boxctl(boxd, user, "run", "alice-killed", "--", "echo", "back")
    assert (ran.returncode, ran.stdout) == (0, b"back\n"), ran.stderr
    boxd.exec_in("alice-killed", "pkill -x sleep", check=False)
    remove_box(boxd, user, "alice-killed")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "caller-gone"])
def test_cancelled_start_then_start(faults_bed, alice, how):
    boxd, user = faults_bed, alice["name"]
    name = f"alice-cancel-{how.name.lower()}"
    # A hook that takes a while holds the start open long enough to cancel it half way.
    new_box(boxd, user, name, {"hooks": {"$v": ["as", ["sleep 3"]]}}, start=False)
    proc = subprocess.Popen(boxctl_argv(boxd, user, "start", name), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/",
                            start_new_session=True)
    try:
        bed.wait_for(lambda: box_state(boxd, name) == "starting", 60, "the start to begin")
        os.killpg(proc.pid, how)  # boxctl's ctrl-c cancels its job; SIGKILL leaves the bus
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    began = time.monotonic()
    assert boxd.box(name, "Start", user=user) == {"body": []}
    # Joined or found running: never the 60 s wait for a ready line that cannot come.
    assert time.monotonic() - began < 45
    assert box_state(boxd, name) == "running"
    ran = boxctl(boxd, user, "run", name, "--", "echo", "ok")
    assert (ran.returncode, ran.stdout) == (0, b"ok\n"), ran.stderr
    remove_box(boxd, user, name)


@pytest.mark.parametrize("stopper", ["local", "remote"])
def test_box_stopped_behind_boxds_back_runs_first_time(faults_bed, alice, stopper):
    boxd, user = faults_bed, alice["name"]
    name = f"alice-behind-{stopper}"
    new_box(boxd, user, name)
    for _ in range(2):  # the second run finds the warm exec the first asked for
        ran = boxctl(boxd, user, "run", name, "--", "true")
        assert ran.returncode == 0, ran.stderr
    # The warm execs are up (launchers waiting for a request): the ones the stop must not
    # leave behind for the next run.
    bed.wait_for(lambda: len(boxd.podman.running_execs(name)) >= 2, 30, "warm execs in the box",
                 interval=0.2)
    # podman itself stops it: as a local podman on the bed's storage, or through the service.
    if stopper == "local":
        boxd.podman.run_cli("stop", "--time", "0", name)
    else:
        boxd.podman.cli("stop", "--time", "0", name)
    ran = boxctl(boxd, user, "run", name, "--", "sh", "-c", "echo hello; exit 3")
    assert (ran.returncode, ran.stdout) == (3, b"hello\n"), ran.stderr
    ran = boxctl(boxd, user, "run", name, "--", "echo", "again")
    assert (ran.returncode, ran.stdout) == (0, b"again\n"), ran.stderr
    remove_box(boxd, user, name)
