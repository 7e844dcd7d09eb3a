"""A hostile local user against the real daemon, through fds, boxes of root's, exports and
signals: fds are used only with the access their caller has, boxd-admin does not become host
root, captured runs are bounded, and session signals reach only the session's process."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from boxd.paths import box_path

pytestmark = pytest.mark.e2e
ERR = "io.github.boxd1.Error."
SPAWN = "ayaaya{uh}a{ss}a{sv}"

# Run as the caller: open the fds the plan names, with the flags it names, and hand them to
# Box.Spawn as stdin/stdout/stderr. Prints the reply as one JSON line.
SPAWN_WITH_FDS = r"""
import asyncio, json, os, sys
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

FLAGS = {"r": os.O_RDONLY | os.O_NONBLOCK, "w": os.O_WRONLY | os.O_NONBLOCK,
         "rw": os.O_RDWR | os.O_NONBLOCK, "path": os.O_PATH}

async def main(address, path, plan, argv):
    fds, mapping = [], {}
    for target, name, how in plan:
        if name == "pipe":
            read_end, write_end = os.pipe()
            fd = write_end if how == "w" else read_end
        else:
            fd = os.open(name, FLAGS[how])
        fds.append(fd)
        mapping[int(target)] = len(fds) - 1
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    reply = await bus.call(Message(
        destination="io.github.boxd1", path=path, interface="io.github.boxd1.Box",
        member="Spawn", signature="ayaaya{uh}a{ss}a{sv}",
        body=[b"/", [a.encode() for a in argv], mapping, {}, {}], unix_fds=fds))
    if reply.message_type == MessageType.ERROR:
        print(json.dumps({"error": reply.error_name, "message": reply.body[0]}))
        return
    # Stay until the command ends: a caller that leaves has its session hung up, and nothing
    # more lands on its fds.
    status = await bus.call(Message(
        destination="io.github.boxd1", path=reply.body[0], interface="io.github.boxd1.Session",
        member="Wait"))
    print(json.dumps({"body": reply.body, "status": status.body}))

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])))
"""


def spawn_with_fds(boxd, user, box, plan, argv):
    result = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", SPAWN_WITH_FDS,
                             boxd.address, box_path(box), json.dumps(plan), json.dumps(argv)],
                            capture_output=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def as_user(person):
    return {"user": person["uid"], "group": person["gid"], "extra_groups": []}


def boxctl(boxd, *args):
    return [str(Path(sys.executable).with_name("boxctl")), *args]


def host_processes(marker: str) -> list[int]:
    """Pids on the host whose command line contains `marker` (boxes share the host's pids)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def until(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def fifo_dir():
    """A directory every user may look into (pytest's own tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="boxd-fifos-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- 5: fds are used with the caller's own access, never widened ---------------------------------

def test_a_read_only_fifo_passed_as_stdout_is_refused_and_nothing_is_written(
        boxd_bed, alice, alice_box, fifo_dir):
    fifo = fifo_dir / "roots-channel"
    os.mkfifo(fifo, 0o644)  # root's: alice may read it, never write it
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a root reader of that channel
    try:
        for target in ("1", "2"):
            reply = spawn_with_fds(boxd_bed, alice["name"], alice_box,
                                   [[target, str(fifo), "r"]], ["echo", "pwned"])
            assert reply["error"] == ERR + "BadFd", reply
            assert "read-only" in reply["message"]
        # Give a session that should not exist every chance to have written.
        time.sleep(1)
        try:
            leaked = os.read(reader, 4096)
        except BlockingIOError:
            leaked = b""
        assert leaked == b"", leaked
    finally:
        os.close(reader)
    assert boxd_bed.daemon.alive()


def test_write_only_stdin_o_path_fds_and_read_only_devices_are_refused(
        boxd_bed, alice, alice_box):
    for plan, word in [([["0", "pipe", "w"]], "write-only"),
                       ([["0", "/etc/shadow", "path"]], "O_PATH"),
                       ([["1", "/dev/null", "r"]], "read-only")]:
        reply = spawn_with_fds(boxd_bed, alice["name"], alice_box, plan, ["cat"])
        assert reply.get("error") == ERR + "BadFd", (plan, reply)
        assert word in reply["message"]


def test_a_fifo_the_caller_may_write_still_works_and_normal_runs_too(
        boxd_bed, alice, alice_box, fifo_dir):
    fifo = fifo_dir / "alices"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, alice["uid"], alice["gid"])
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        reply = spawn_with_fds(boxd_bed, alice["name"], alice_box, [["1", str(fifo), "w"]],
                               ["echo", "through-the-fifo"])
        assert "error" not in reply, reply
        got = b""
        deadline = time.monotonic() + 60
        while b"\n" not in got and time.monotonic() < deadline:
            if select.select([reader], [], [], 1)[0]:
                got += os.read(reader, 4096)
        assert got == b"through-the-fifo\n"
    finally:
        os.close(reader)
    ran = subprocess.run(boxctl(boxd_bed, "run", "-q", alice_box, "--", "cat"), input=b"hi\n",
                         capture_output=True, timeout=120, cwd="/",
                         env={**os.environ, "BOXD_BUS_ADDRESS": boxd_bed.address},
                         **as_user(alice))
    assert (ran.returncode, ran.stdout) == (0, b"hi\n"), ran.stderr


# -- 6: boxd-admin does not become host root through root's boxes --------------------------------

@pytest.fixture(scope="module")
def root_box(boxd_bed):
    name = "root-hostile"
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", [name, "", {}])
    assert "error" not in reply, reply
    assert boxd_bed.box(name, "Start") == {"body": []}
    yield name
    boxd_bed.box(name, "Remove", "b", [True])


def test_an_admin_cannot_act_as_root_in_roots_box(boxd_bed, admin, root_box):
    user = admin["name"]
    marker = Path("/etc/boxd-admin-was-root")
    spawn = [{"$b": "/"}, [{"$b": "touch"}, {"$b": f"/run/host{marker}"}],
             {"$i": []}, {}, {}]
    for member, sig, args in [
            ("Spawn", SPAWN, spawn),
            ("Spawn", SPAWN, [*spawn[:4], {"root": {"$v": ["b", True]}}]),
            ("Configure", "a{sv}", [{"hooks": {"$v": ["as", [f"touch /run/host{marker}"]]}}]),
            ("ExportBin", "s", ["/usr/bin/id"]),
            ("GenerateEntry", "", []),
            ("Unexport", "s", ["id"])]:
        reply = boxd_bed.box(root_box, member, sig, args, user=user)
        assert reply.get("error") == ERR + "AccessDenied", (member, reply)
        assert "belongs to root" in reply["message"], reply
    ran = subprocess.run(boxctl(boxd_bed, "run", root_box, "--", "touch", f"/run/host{marker}"),
                         capture_output=True, timeout=120, cwd="/",
                         env={**os.environ, "BOXD_BUS_ADDRESS": boxd_bed.address},
                         **as_user(admin))
    assert ran.returncode != 0 and b"belongs to root" in ran.stderr, ran
    assert not marker.exists()


def test_an_admin_may_still_list_see_and_stop_roots_box(boxd_bed, admin, root_box):
    user = admin["name"]
    assert root_box in [b[1] for b in boxd_bed.manager("ListBoxes", user=user)["body"][0]]
    assert "error" not in boxd_bed.manager("GetBox", "s", [root_box], user=user)
    assert "error" not in boxd_bed.box(root_box, "GetSettings", user=user)
    assert boxd_bed.box(root_box, "Stop", user=user) == {"body": []}
    assert boxd_bed.podman.inspect(root_box)["State"]["Status"] in ("exited", "stopped")


# -- 10: captured runs (exports) are bounded in size and time ------------------------------------

def test_an_export_whose_output_is_huge_is_stopped_with_a_named_error(
        boxd_bed, alice, alice_box):
    desktop = "/usr/share/applications/boxd-huge.desktop"
    boxd_bed.exec_in(alice_box, f"mkdir -p {desktop.rsplit('/', 1)[0]} && "
                                f"truncate -s 256M {desktop}")
    try:
        started = time.monotonic()
        reply = boxd_bed.box(alice_box, "ExportApp", "s", ["boxd-huge"], user=alice["name"])
        took = time.monotonic() - started
        assert reply.get("error") == ERR + "LimitReached", reply
        assert "printed more than" in reply["message"]
        assert took < 60, took
        print(f"huge export refused in {took:.2f} s")
        assert boxd_bed.daemon.alive()
        assert "error" not in boxd_bed.manager("ListBoxes", user=alice["name"])
    finally:
        boxd_bed.exec_in(alice_box, f"rm -f {desktop}")


def test_an_export_that_hangs_is_stopped_after_the_time_limit(boxd_bed, alice, alice_box):
    # The owner's own FIFO where boxd writes the new file: the in-box write blocks for ever.
    trap = Path(alice["home"]) / ".local" / "bin" / "boxd-hangs.boxd-new"
    trap.parent.mkdir(parents=True, exist_ok=True)
    for path in (trap.parent.parent, trap.parent):
        os.chown(path, alice["uid"], alice["gid"])
    trap.unlink(missing_ok=True)
    os.mkfifo(trap, 0o600)
    os.chown(trap, alice["uid"], alice["gid"])
    try:
        started = time.monotonic()
        reply = boxd_bed.box(alice_box, "ExportBin", "s", ["/usr/bin/boxd-hangs"],
                             user=alice["name"])
        took = time.monotonic() - started
        assert reply.get("error") == ERR + "Timeout", reply
        assert took < 60, took
        print(f"hung export stopped after {took:.2f} s")
        assert boxd_bed.daemon.alive()
        # The hung command was killed, not left behind in the box.
        until(lambda: not host_processes("boxd-hangs.boxd-new"), what="hung export killed")
        assert boxd_bed.daemon.log_events("captured_run_stopped")
    finally:
        trap.unlink(missing_ok=True)


# -- 11: session signals go through pidfds -------------------------------------------------------

def _run_until_ready(boxd, person, box, script):
    proc = subprocess.Popen(boxctl(boxd, "run", "-q", box, "--", "sh", "-c", script),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                            env={**os.environ, "BOXD_BUS_ADDRESS": boxd.address},
                            **as_user(person))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_a_signal_to_a_session_reaches_its_process(boxd_bed, alice, alice_box):
    proc = _run_until_ready(boxd_bed, alice, alice_box, "echo ready; exec sleep 4321")
    try:
        until(lambda: host_processes("sleep\x004321"), what="sleep running")
        pid = host_processes("sleep\x004321")[0]
        proc.send_signal(signal.SIGTERM)  # boxctl passes it on with Session.Signal
        assert proc.wait(60) == 128 + signal.SIGTERM
        until(lambda: not host_processes("sleep\x004321"), what="sleep gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert pid not in [e["pid"] for e in boxd_bed.daemon.log_events("process_not_pinned")]


def test_a_caller_that_vanishes_gets_its_process_hung_up_then_killed(boxd_bed, alice, alice_box):
    proc = _run_until_ready(boxd_bed, alice, alice_box,
                            "trap '' HUP; echo ready; exec sleep 4322")
    until(lambda: host_processes("sleep\x004322"), what="sleep running")
    pid = host_processes("sleep\x004322")[0]
    assert stat.S_ISDIR(os.stat(f"/proc/{pid}").st_mode)
    proc.kill()  # the caller leaves the bus without a word
    proc.wait()
    # SIGHUP is ignored: SIGKILL follows the grace, through the pinned process.
    until(lambda: not host_processes("sleep\x004322"), what="ignoring sleep killed")
