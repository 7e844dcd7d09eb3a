"""boxctl when things around it fail: a stopped, killed or absent daemon, podman down, output
nobody reads, a closed stdout. Each fault ends boxctl in time with one line that says what is
wrong and a hint that fits this host. The only processes stopped or killed are the bed's own
daemon and podman service, which every test here brings back."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bed
from boxd import faults
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e


def argv(boxd_bed, user: str, *args: str, env: tuple[str, ...] = ()) -> list[str]:
    """boxctl as `user`, with extra environment settings."""
    words = boxctl_argv(boxd_bed, user, *args)
    at = words.index("env") + 1
    return [*words[:at], *env, *words[at:]]


def run(words: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(words, capture_output=True, timeout=180, cwd="/", **kwargs)


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text and "unexpected error" not in text, text
    return text


def read_until(stream, marker: bytes, timeout: float = 120) -> bytes:
    """What a client wrote to `stream` up to and including `marker`, and maybe a little more."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([stream], [], [], 1)[0]:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the client ended before it wrote {marker!r}: {seen!r}"
            seen += chunk
    return seen


def restart_daemon(boxd_bed) -> None:
    """The bed's daemon, killed or stopped by a test, running again."""
    daemon = boxd_bed.daemon
    if daemon.proc is not None:
        with_signal(daemon.proc.pid, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.stop()
        daemon.proc = None
    daemon.start()


def with_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def test_a_stopped_daemon_times_a_waiting_list_out_with_one_line(boxd_bed, alice):
    words = argv(boxd_bed, alice["name"], "list", env=("BOXCTL_TIMEOUT=3",))
    assert run(words).returncode == 0
    pid = boxd_bed.daemon.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = run(words)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "boxctl: cannot reach boxd: boxd did not answer within 3 s" in line
    assert "BOXCTL_TIMEOUT" in line
    assert 2.5 < took < 30, took  # the timeout, not forever
    print(f"boxctl list gave up on a stopped daemon after {took:.2f} s (BOXCTL_TIMEOUT=3)")
    assert run(words).returncode == 0  # and it answers again once it runs


@pytest.mark.parametrize("verb", ["start", "run"])
def test_a_daemon_killed_during_a_start_ends_the_client_at_once(boxd_bed, alice, verb):
    user = alice["name"]
    box = f"alice-fk-{verb}"
    # The hook holds the start in the entry point, long enough to kill boxd in the middle.
    hook = "echo boxd-hook-begun; sleep 300"
    reply = boxd_bed.manager("CreateBox", "ssa{sv}",
                             [box, "", {"hooks": {"$v": ["as", [hook]]}}], user=user)
    assert "error" not in reply, reply
    command = ["start", box] if verb == "start" else ["run", box, "--", "true"]
    client = subprocess.Popen(argv(boxd_bed, user, *command), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd="/")
    assert client.stderr is not None
    try:
        seen = read_until(client.stderr, b"boxd-hook-begun\n")
        assert client.poll() is None
        boxd_bed.daemon.proc.kill()
        boxd_bed.daemon.proc.wait()
        killed = time.monotonic()
        status = client.wait(timeout=60)
        took = time.monotonic() - killed
        rest = seen.split(b"boxd-hook-begun\n", 1)[1] + client.stderr.read()
        assert status == 1, rest
        line = one_line(rest)
        assert line.startswith("boxctl: cannot reach boxd: boxd left the bus before finishing"), \
            line
        assert took < 5, took  # at once: no timeout involved
        print(f"boxctl {verb} noticed the killed daemon in {took * 1000:.0f} ms")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        client.stderr.close()
        restart_daemon(boxd_bed)
        boxd_bed.box(box, "Remove", "b", [True], user=user)


def test_daemon_down_says_so_with_a_hint_for_this_host(boxd_bed, alice):
    user = alice["name"]
    boxd_bed.daemon.stop()
    try:
        result = run(argv(boxd_bed, user, "list"))
        assert result.returncode == 1
        line = one_line(result.stderr)
        assert line.startswith("boxctl: cannot reach boxd: boxd is not running on the system "
                               "bus (hint: "), line
        assert faults.start_boxd("system") in line
        assert ("systemctl" in line) == faults.systemd_host()
        assert result.stdout == b""
        doctor = run(argv(boxd_bed, user, "doctor"))
        assert doctor.returncode == 1
        out = doctor.stdout.decode()
        assert "✔ bus: connected to the system bus" in out
        assert "✘ boxd: boxd does not answer" in out
        assert "✔ polkit: polkitd is running" in out  # the rest of the table, as far as it goes
        assert doctor.stderr == b""
    finally:
        restart_daemon(boxd_bed)
    assert run(argv(boxd_bed, user, "list")).returncode == 0


def test_doctor_prints_its_whole_table_with_podman_down(boxd_bed, alice, alice_box):
    user = alice["name"]
    boxd_bed.podman.stop()
    try:
        bed.wait_for(lambda: boxd_bed.busctl(
            "get-property", "io.github.boxd1", "/io/github/boxd1", "io.github.boxd1.Manager",
            "PodmanAvailable").stdout.strip() == "b false", 60, "boxd to see podman gone")
        result = run(argv(boxd_bed, user, "doctor"))
        out = result.stdout.decode()
        assert result.returncode == 1, out
        assert result.stderr == b"", result.stderr
        assert "✔ boxd: boxd " in out
        assert "✘ podman: boxd cannot reach podman's REST service" in out
        assert faults.start_podman() in out
        assert "✔ polkit: polkitd is running" in out
        rows = out.splitlines()
        assert any(row.startswith("✘ image: cannot list images") for row in rows), out
        assert f" box {alice_box}: " in out  # the boxes too, whatever podman's absence does to them
        started = run(argv(boxd_bed, user, "start", "no-such-box"))
        assert started.returncode == 1
        one_line(started.stderr)
    finally:
        boxd_bed.podman.start()
    bed.wait_for(lambda: boxd_bed.busctl(
        "get-property", "io.github.boxd1", "/io/github/boxd1", "io.github.boxd1.Manager",
        "PodmanAvailable").stdout.strip() == "b true", 60, "boxd to see podman back")


def test_a_reader_gone_away_ends_boxctl_quietly(boxd_bed):
    # As root, without runuser, which would announce the child's SIGPIPE ("Broken pipe").
    words = [str(Path(sys.executable).with_name("boxctl")), "list"]
    env = {**os.environ, "BOXD_BUS_ADDRESS": boxd_bed.address}
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE, every time
    try:
        result = subprocess.run(words, stdout=write_end, stderr=subprocess.PIPE, timeout=120,
                                cwd="/", env=env)
    finally:
        os.close(write_end)
    assert result.stderr == b"", result.stderr  # no "Broken pipe", no "cannot reach boxd"
    assert result.returncode == -signal.SIGPIPE  # as coreutils end
    # As a shell sees it (head may also leave after boxctl is done: then it is 0):
    shell = subprocess.run(["bash", "-c", '"$@" | head -0; echo "${PIPESTATUS[0]}"', "sh",
                            *words], capture_output=True, timeout=120, cwd="/", env=env)
    assert shell.stderr == b"", shell.stderr
    assert shell.stdout.strip() in (b"0", b"141")


def test_a_closed_stdout_is_no_error(boxd_bed, alice, alice_box):
    words = argv(boxd_bed, alice["name"], "run", alice_box, "--", "sh", "-c",
                 "echo to-nowhere; echo to-stderr >&2")
    result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *words], capture_output=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"to-stderr\n"  # stdout went nowhere, not into boxctl's bus socket
    listed = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh",
                             *argv(boxd_bed, alice["name"], "list")],
                            capture_output=True, timeout=120, cwd="/")
    assert listed.returncode == 0 and listed.stderr == b"", listed.stderr


def test_nothing_lands_on_a_killed_clients_fds(boxd_bed, alice, alice_box):
    """Once the client is gone its stdout and stderr belong to whoever ran it (a shell, its
    terminal): boxd hangs the command up and writes nothing more there, not even podman's own
    "Error: read unixpacket ...: connection reset by peer" about the attach it lost."""
    client = subprocess.Popen(argv(boxd_bed, alice["name"], "run", alice_box, "--", "sh", "-c",
                                   "echo begun; exec sleep 300"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                              start_new_session=True)
    assert client.stdout is not None
    try:
        assert read_until(client.stdout, b"begun\n") == b"begun\n"
    finally:
        os.killpg(client.pid, signal.SIGKILL)  # runuser and boxctl: this test started both
    # boxd lets go of its copies of the fds when the session ends: then these read EOF.
    out, err = client.communicate(timeout=120)
    assert out == b"" and err == b"", (out, err)
