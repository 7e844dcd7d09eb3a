"""Entering boxes: boxctl and Box.Spawn against the real daemon, real podman, a real PTY."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bed.term import Terminal
from boxd import faults
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e


def boxctl(boxd, user, *args, input=None, timeout=60):
    return subprocess.run(boxctl_argv(boxd, user, *args), input=input, capture_output=True,
                          timeout=timeout, cwd="/")


@pytest.fixture
def term(boxd_bed, alice, alice_box):
    terminals = []

    def open_terminal(*args, rows=24, cols=80):
        t = Terminal(boxctl_argv(boxd_bed, alice["name"], *args), rows=rows, cols=cols,
                     cwd=alice["home"])
        terminals.append(t)
        return t

    yield open_terminal
    for t in terminals:
        t.close()


def test_pipes_keep_stdout_stderr_and_exit_status_apart(boxd_bed, alice, alice_box):
    result = boxctl(boxd_bed, alice["name"], "run", alice_box, "--", "sh", "-c",
                    "echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, b"out\n", b"err\n")
    result = boxctl(boxd_bed, alice["name"], "run", "-c", alice_box, "cat", input=b"hi\n")
    assert (result.returncode, result.stdout) == (0, b"hi\n")
    result = boxctl(boxd_bed, alice["name"], "run", alice_box, "--", "id", "-un")
    assert result.stdout.decode().strip() == alice["name"]


def test_binary_data_round_trips_byte_exact(boxd_bed, alice, alice_box):
    payload = os.urandom(1 << 20)
    result = boxctl(boxd_bed, alice["name"], "run", alice_box, "--", "cat", input=payload)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_cwd_follows_the_caller_or_falls_back_to_home(boxd_bed, alice, alice_box):
    home = alice["home"]
    sub = os.path.join(home, "project")
    os.makedirs(sub, exist_ok=True)
    os.chown(sub, alice["uid"], alice["gid"])
    argv = boxctl_argv(boxd_bed, alice["name"], "run", alice_box, "--", "pwd")
    result = subprocess.run(argv, cwd=sub, capture_output=True, timeout=60)
    assert result.stdout.decode().strip() == sub
    missing = "/var/tmp/boxd-test-only-on-host"
    os.makedirs(missing, exist_ok=True)
    result = subprocess.run(argv, cwd=missing, capture_output=True, timeout=60)
    assert result.stdout.decode().strip() == home
    assert b"does not exist in this box" in result.stderr


def test_tty_session_types_resizes_and_exits_with_status(term, alice):
    t = term("enter", "alice-sess", rows=30, cols=100)
    t.read_until("$ ")
    t.send("echo $((6*7))-ok\r")
    t.read_until("42-ok")
    t.send("stty size\r")
    t.read_until("30 100")
    t.resize(41, 132)
    t.ask_until("stty size\r", "41 132")
    t.send("id -un\r")
    t.read_until(alice["name"])
    t.send("exit 3\r")
    assert t.wait() == 3


def test_ctrl_c_interrupts_and_ctrl_p_reaches_the_shell(term):
    t = term("enter", "alice-sess")
    t.read_until("$ ")
    t.send("echo sl''eeping; sleep 100\r")
    t.read_until("sleeping\r\n")
    time.sleep(0.3)  # into sleep, most likely; if not, ctrl-c ends the line all the same: 130
    t.send(b"\x03")
    t.read_until("$ ")
    t.send("echo status-$?\r")
    t.read_until("status-130")
    # ctrl-p is bash's previous-history: it must reach the shell, not podman's detach keys.
    t.send("echo ctrl-p-works\r")
    t.read_until("ctrl-p-works")
    t.send(b"\x10\r")
    t.read_until("ctrl-p-works")
    t.send("exit\r")
    assert t.wait() == 0


def test_exit_status_of_a_signal_and_terminal_restored(term):
    t = term("run", "-c", "alice-sess", "sh", "-c", "echo go''ne; exec sleep 100")
    # Not before the box's command runs: until then the terminal may be raw (boxctl's, or a
    # warm launcher's while it reads its request), and ctrl-c would be a plain byte.
    t.read_until("gone")
    t.send(b"\x03")
    assert t.wait() == 130
    # boxctl put the terminal back as it found it (canonical mode, echo on).
    lflag = t.attrs()[3]
    import termios

    assert lflag & termios.ICANON and lflag & termios.ECHO


def test_twenty_concurrent_runs(boxd_bed, alice, alice_box):
    def one(i):
        return boxctl(boxd_bed, alice["name"], "run", alice_box, "--", "sh", "-c",
                      f"echo run-{i}; exit {i % 5}")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [r.stdout for r in results] == [f"run-{i}\n".encode() for i in range(20)]
    assert [r.returncode for r in results] == [i % 5 for i in range(20)]


def test_killing_the_client_ends_the_process_in_the_box(boxd_bed, alice, alice_box):
    # The box's process is `sleep N`, a command line only it has: the client's own argv says
    # $((N - 1 + 1)), so finding the marker cannot mean finding boxctl.
    seconds = 100000 + os.getpid() % 100000
    marker = f"^sleep {seconds}$"
    proc = subprocess.Popen(boxctl_argv(boxd_bed, alice["name"], "run", alice_box, "--",
                                        "sh", "-c", f"exec sleep $(({seconds - 1} + 1))"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _pgrep(marker):
        time.sleep(0.1)
    assert _pgrep(marker), "the command never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pgrep(marker):
        time.sleep(0.1)
    assert not _pgrep(marker), "the process in the box outlived its client"


def _pgrep_all(pattern: str) -> str:
    return subprocess.run(["ps", "-eo", "pid,ppid,user,args"], capture_output=True,
                          text=True).stdout.count(pattern.split()[0])


def _pgrep(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_spawn_bad_input(boxd_bed, alice, alice_box):
    err = "io.github.boxd1.Error."
    true = [{"$b": "true"}]
    root = {"$b": "/"}
    fd0 = {"$i": [[0, {"$fd": 0}]]}
    cases = [
        ([root, [], fd0, {}, {}], "argv is empty"),
        ([{"$b": "relative"}, true, fd0, {}, {}], "absolute path"),
        ([root, true, fd0, {}, {"tty": {"$v": ["s", "yes"]}}], "must be of type b"),
        ([root, true, fd0, {}, {"bogus": {"$v": ["b", True]}}], "unknown spawn option"),
        ([root, true, fd0, {"LD_PRELOAD": "/tmp/x.so"}, {}], "may not be set"),
        ([root, true, fd0, {"A=B": "x"}, {}], "environment variable name"),
        ([root, true, {"$i": [[5, {"$fd": 0}]]}, {}, {}], "fds may only map 0, 1 and 2"),
        ([root, true, {"$i": [[0, {"$idx": 7}]]}, {}, {}], "file descriptor index"),
    ]
    for args, message in cases:
        reply = boxd_bed.box(alice_box, "Spawn", "ayaaya{uh}a{ss}a{sv}", args,
                             user=alice["name"])
        assert reply.get("error") == err + "InvalidArgument", (message, reply)
        assert message in reply["message"]
    reply = boxd_bed.box(alice_box, "Spawn", "ayaaya{uh}a{ss}a{sv}",
                         [root, [{"$b": "x" * 300_000}], fd0, {}, {}], user=alice["name"])
    assert reply.get("error") == err + "TooLarge" and "longer than" in reply["message"], reply
    assert boxd_bed.daemon.alive()
    fds = os.listdir(f"/proc/{boxd_bed.daemon.proc.pid}/fd")
    assert len(fds) < 40, f"the daemon leaks fds: {len(fds)} open"


def test_run_starts_a_stopped_box_first(boxd_bed, alice):
    user = alice["name"]
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-cold", "", {}],
                                           user=user)
    try:
        result = boxctl(boxd_bed, user, "run", "alice-cold", "--", "echo", "warm-now")
        assert (result.returncode, result.stdout) == (0, b"warm-now\n")
        assert boxd_bed.podman.inspect("alice-cold")["State"]["Status"] == "running"
    finally:
        boxd_bed.box("alice-cold", "Remove", "b", [True], user=user)


def _warm_launchers(container_id: str) -> int:
    """Launchers waiting in one box: their parent is the conmon of an exec in that container."""
    found = subprocess.run(["pgrep", "-f", "boxd-warm boxd-warm-"], capture_output=True,
                           text=True).stdout.split()
    count = 0
    for pid in found:
        try:
            ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
            count += container_id in open(f"/proc/{ppid}/cmdline").read().split("\0")
        except (OSError, IndexError):
            continue
    return count


def _until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_sessions_after_the_first_start_from_warm_execs(boxd_bed, alice):
    user, box = alice["name"], "alice-warm"
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", [box, "", {}], user=user)
    try:
        assert boxctl(boxd_bed, user, "run", box, "--", "true").returncode == 0
        box_id = boxd_bed.podman.inspect(box)["Id"]
        # Asking for a kind of session keeps two of that kind started ahead, as alice.
        assert _until(lambda: _warm_launchers(box_id) == 2), _warm_launchers(box_id)
        argv = boxctl_argv(boxd_bed, user, "run", box, "--", "sh", "-c",
                           'pwd; printf "%s|%s\\n" "$LANG" "$LC_ALL"; cat; echo err >&2; exit 5')
        env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "it's \\n $(x)"}
        result = subprocess.run(argv, cwd=alice["home"], input=b"from stdin\n", env=env,
                                capture_output=True, timeout=60)
        assert (result.returncode, result.stderr) == (5, b"err\n")
        assert result.stdout == f"{alice['home']}\nC.UTF-8|it's \\n $(x)\nfrom stdin\n".encode()
        # A session without stdin reads end of input at once, as a cold one does.
        result = subprocess.run(boxctl_argv(boxd_bed, user, "run", box, "--", "cat"),
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, b"")
        assert _until(lambda: _warm_launchers(box_id) == 2), _warm_launchers(box_id)
        # Terminals too: the request is neither echoed nor cooked, and the command finds the
        # terminal as a cold session would (its size, canonical mode, echo).
        for _ in range(3):
            probe = "stty size; stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo"
            t = Terminal(boxctl_argv(boxd_bed, user, "run", box, "--", "sh", "-c", probe),
                         rows=30, cols=100, cwd=alice["home"])
            try:
                assert t.wait() == 0
                assert t.output == b"30 100\r\nicanon\r\necho\r\n", t.output
            finally:
                t.close()
            assert _until(lambda: _warm_launchers(box_id) == 4), (
                _warm_launchers(box_id), _pgrep_all("boxd-warm boxd-warm-"),
                [e for kind in ("warm_dropped", "warm_failed", "warm_unsupported", "warm_crashed")
                 for e in boxd_bed.daemon.log_events(kind) if e.get("box") == box])
        sessions = [e for e in boxd_bed.daemon.log_events("session_started") if e.get("box") == box]
        assert [(e["tty"], e["warm"]) for e in sessions] == [
            (False, False), (False, True), (False, True), (True, False), (True, True), (True, True)]
        # Stopped behind boxd's back (its event may still be on the way): the next run starts
        # it again rather than failing on podman's "container state improper".
        for _ in range(3):
            # podman refuses ("has active exec sessions") while the ends of execs, warm ones
            # included, are still being booked: retry, as a person would.
            assert _until(lambda: boxd_bed.podman.cli("stop", "-t", "0", box,
                                                      check=False).returncode == 0, 10)
            result = boxctl(boxd_bed, user, "run", "-q", box, "--", "echo", "again")
            assert (result.returncode, result.stdout) == (0, b"again\n"), result.stderr
        # They end with their box.
        assert boxd_bed.box(box, "Stop", user=user) == {"body": []}
        assert _until(lambda: _warm_launchers(box_id) == 0), _warm_launchers(box_id)
    finally:
        boxd_bed.box(box, "Remove", "b", [True], user=user)


def test_boxctl_list_images_and_errors(boxd_bed, alice, alice_box):
    user = alice["name"]
    listed = boxctl(boxd_bed, user, "list").stdout.decode()
    assert listed.splitlines()[0].split() == ["NAME", "ID", "IMAGE", "STATE", "OWNER"]
    assert alice_box in listed
    assert boxctl(boxd_bed, user, "list", "-q").stdout.decode().split() == [alice_box]
    images = boxctl(boxd_bed, user, "images").stdout.decode()
    assert "localhost/boxd-debian:12" in images
    missing = boxctl(boxd_bed, user, "start", "no-such")
    assert missing.returncode == 1
    assert missing.stderr.decode().count("\n") == 1  # one line, with a hint
    assert "there is no box named 'no-such'" in missing.stderr.decode()
    assert "hint:" in missing.stderr.decode()
    argv = [a if not a.startswith("BOXD_BUS_ADDRESS=") else "BOXD_BUS_ADDRESS=unix:path=/no"
            for a in boxctl_argv(boxd_bed, user, "list")]
    result = subprocess.run(argv, capture_output=True)
    assert result.returncode == 1 and b"cannot reach boxd" in result.stderr


def test_doctor_says_what_is_wrong_and_how_to_fix_it(boxd_bed, alice, alice_box):
    result = boxctl(boxd_bed, alice["name"], "doctor")
    out = result.stdout.decode()
    assert result.returncode == 0, out
    assert "✔ polkit: polkitd is running" in out
    assert f"✔ box {alice_box}: running, set up by boxd" in out
    boxd_bed.polkit.stop()
    try:
        result = boxctl(boxd_bed, alice["name"], "doctor")
    finally:
        boxd_bed.polkit.start()
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "✘ polkit: polkitd is not running" in out
    assert f"fix: {faults.start_polkit()}" in out  # systemctl only where systemd runs
