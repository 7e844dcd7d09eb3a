"""What Toolbx's own system tests expect of a box, tried the same way against boxctl as a real user:
the host's groups, the host's system bus, the host's limits and the caller's environment."""

from __future__ import annotations

import grp
import os
import resource
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bed
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e

EXTRA_GROUP = "boxd-tbxgrp"


@pytest.fixture(scope="module")
def gina(boxd_bed) -> dict:
    """A user in boxd's group and one more host group, which her box must keep."""
    return bed.ensure_user("boxd-gina", 2111, groups=("boxd", EXTRA_GROUP))


@pytest.fixture(scope="module")
def host_system_bus():
    """The host's system bus at its usual path: the machine's own if it runs one, else one
    started for this module (and stopped after)."""
    socket_path = Path("/run/dbus/system_bus_socket")
    if socket_path.is_socket():
        yield socket_path
        return
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["dbus-daemon", "--system", "--nofork", "--nopidfile",
                             f"--address=unix:path={socket_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.is_socket():
            assert proc.poll() is None, "dbus-daemon --system ended at once"
            assert time.monotonic() < deadline, "no system bus socket within 30 s"
            time.sleep(0.05)
        yield socket_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        socket_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def gina_box(boxd_bed, gina, host_system_bus) -> Iterator[str]:
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["gina-tbx", "", {}], user=gina["name"])
    assert reply.get("error") in (None, "io.github.boxd1.Error.AlreadyExists"), reply
    assert boxd_bed.box("gina-tbx", "Start", user=gina["name"]) == {"body": []}
    yield "gina-tbx"
    boxd_bed.box("gina-tbx", "Remove", "b", [True], user=gina["name"])


def run(boxd, user, *args, env=None, timeout=120):
    argv = boxctl_argv(boxd, user, *args)
    if env:
        argv[argv.index("env") + 1:argv.index("env") + 1] = [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(argv, capture_output=True, timeout=timeout, cwd="/")


def test_id_in_the_box_matches_id_on_the_host(boxd_bed, gina, gina_box):
    host = subprocess.run(["id", "-G", gina["name"]], capture_output=True, text=True, check=True)
    box = run(boxd_bed, gina["name"], "run", gina_box, "--", "id", "-G")
    assert box.returncode == 0, box.stderr
    # The same gids, plus the box's own sudo group (as Toolbx adds wheel or sudo).
    extra = set(box.stdout.decode().split()) - set(host.stdout.split())
    assert set(host.stdout.split()) <= set(box.stdout.decode().split())
    names = run(boxd_bed, gina["name"], "run", gina_box, "--", "sh", "-c",
                "for g in " + " ".join(sorted(extra)) + "; do getent group $g | cut -d: -f1; done")
    assert set(names.stdout.decode().split()) <= {"sudo", "wheel"}, names
    status = run(boxd_bed, gina["name"], "run", gina_box, "--", "grep", "^Groups:",
                 "/proc/self/status")
    gids = {int(g) for g in status.stdout.split()[1:]}
    assert grp.getgrnam(EXTRA_GROUP).gr_gid in gids and grp.getgrnam("boxd").gr_gid in gids


def test_a_host_group_grants_the_same_access_in_the_box(boxd_bed, gina, gina_box):
    shared = Path("/var/tmp/boxd-tbx-group")
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(mode=0o755)
    secret = shared / "for-the-group"
    secret.write_text("only the group\n")
    os.chown(secret, 0, grp.getgrnam(EXTRA_GROUP).gr_gid)
    secret.chmod(0o640)
    try:
        result = run(boxd_bed, gina["name"], "run", gina_box, "--", "cat",
                     f"/run/host{secret}")
        assert (result.returncode, result.stdout) == (0, b"only the group\n"), result.stderr
        # And nothing more: a file of a group she is not in stays closed.
        secret.chmod(0o600)
        result = run(boxd_bed, gina["name"], "run", gina_box, "--", "cat",
                     f"/run/host{secret}")
        assert result.returncode != 0 and b"Permission denied" in result.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_group_left_on_the_host_is_not_kept_by_the_box(boxd_bed, gina, gina_box):
    """Root in the box could otherwise still use the gid: the box must be re-created."""
    assert boxd_bed.box(gina_box, "Stop", user=gina["name"]) == {"body": []}
    subprocess.run(["gpasswd", "-d", gina["name"], EXTRA_GROUP], check=True,
                   capture_output=True)
    try:
        reply = boxd_bed.box(gina_box, "Start", user=gina["name"])
        assert reply["error"] == "io.github.boxd1.Error.StartFailed", reply
        assert "re-create the box" in reply["message"]
        assert str(grp.getgrnam(EXTRA_GROUP).gr_gid) in reply["message"]
        state = boxd_bed.podman.inspect(gina_box)["State"]["Status"]
        assert state != "running"
    finally:
        bed.ensure_user("boxd-gina", 2111, groups=("boxd", EXTRA_GROUP))
    assert boxd_bed.box(gina_box, "Start", user=gina["name"]) == {"body": []}


def test_the_host_system_bus_answers_in_the_box(boxd_bed, gina, gina_box, host_system_bus):
    # Real D-Bus: the server answers EXTERNAL auth for gina's own uid with OK and its guid.
    handshake = r"""
use Socket;
my $path = $ENV{DBUS_SYSTEM_BUS_ADDRESS} =~ s/^unix:path=//r;
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
connect($s, pack_sockaddr_un($path)) or die "connect $path: $!";
my $hex = unpack("H*", "$<");
syswrite($s, "\0AUTH EXTERNAL $hex\r\n");
sysread($s, my $answer, 200);
print $answer;
"""
    result = run(boxd_bed, gina["name"], "run", gina_box, "--", "perl", "-e", handshake)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"OK "), result.stdout
    env = run(boxd_bed, gina["name"], "run", gina_box, "--", "sh", "-c",
              'echo "$DBUS_SYSTEM_BUS_ADDRESS"; readlink /run/dbus/system_bus_socket')
    assert env.stdout.decode().split() == ["unix:path=/run/host/run/dbus/system_bus_socket",
                                           "/run/host/run/dbus/system_bus_socket"]
    assert stat.S_ISSOCK(os.stat(host_system_bus).st_mode)


def _host_limit(label: str, pid: int = 1, column: int = 0) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(label + " "):
            return line[len(label):].split()[column]
    raise AssertionError(label)


def test_the_box_has_the_hosts_process_limit(boxd_bed, gina, gina_box):
    result = run(boxd_bed, gina["name"], "run", gina_box, "--", "bash", "-c", "ulimit -u")
    assert result.returncode == 0, result.stderr
    # The host's (PID 1's), capped by the hard limits of podman's service and of boxd (on these
    # machines, without CAP_SYS_RESOURCE, the bed's podman runs with a lower one).
    expected = int(_host_limit("Max processes"))
    own_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if own_hard >= 0:
        expected = min(expected, own_hard)
    assert boxd_bed.podman.proc is not None
    expected = min(expected, int(_host_limit("Max processes", boxd_bed.podman.proc.pid, 1)))
    assert int(result.stdout) == expected
    result = run(boxd_bed, gina["name"], "run", gina_box, "--", "sh", "-c", "ulimit -n")
    assert int(result.stdout) <= 1024  # a login's soft limit, not podman's 1048576


def test_the_callers_history_and_terminal_settings_reach_the_box(boxd_bed, gina, gina_box):
    passed = {"HISTCONTROL": "ignoreboth", "HISTFILE": "/tmp/h", "HISTFILESIZE": "9",
              "HISTIGNORE": "ls", "HISTSIZE": "8", "HISTTIMEFORMAT": "%F",
              "KDE_FULL_SESSION": "true", "KDE_SESSION_VERSION": "6",
              "KONSOLE_VERSION": "240202", "KONSOLE_DBUS_SESSION": "/Sessions/1",
              "XTERM_VERSION": "XTerm(390)"}
    result = run(boxd_bed, gina["name"], "run", gina_box, "--", "env", env=passed)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.decode().splitlines()
                if "=" in line)
    assert {k: seen.get(k) for k in passed} == passed


@pytest.mark.parametrize("command, status, message", [
    ("/etc", 126, b"/etc: Is a directory\n"),
    ("/etc/hostname", 126, b"/etc/hostname: Permission denied\n"),
    ("/no/such/thing", 127, b"/no/such/thing: No such file or directory\n"),
    ("no-such-command", 127, b"no-such-command: command not found\n"),
])
def test_a_command_that_cannot_run_fails_as_a_shell_says(boxd_bed, gina, gina_box, command,
                                                          status, message):
    # Twice: the first may take the ordinary path, the second a warm launcher.
    for _ in range(2):
        result = run(boxd_bed, gina["name"], "run", gina_box, "--", command)
        assert (result.returncode, result.stderr) == (status, message)


def test_run_gets_the_login_profile_but_the_callers_env_wins(boxd_bed, gina, gina_box):
    home = Path(gina["home"])
    tools = home / ".local" / "tbx-bin"
    tools.mkdir(parents=True, exist_ok=True)
    tool = tools / "tbx-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    profile = home / ".profile"
    profile.write_text('echo "profile noise"\nexport PATH="$HOME/.local/tbx-bin:$PATH"\n'
                       "export HISTSIZE=1 TBX_FROM_PROFILE=yes\n")
    for path in (home / ".local", tools, tool, profile):
        os.chown(path, gina["uid"], gina["gid"])
    try:
        # The first run after a start may be cold, the next ones warm: all the same.
        for _ in range(3):
            result = run(boxd_bed, gina["name"], "run", gina_box, "--", "sh", "-c",
                         'tbx-tool; echo "$HISTSIZE $TBX_FROM_PROFILE"',
                         env={"HISTSIZE": "500"})
            assert (result.returncode, result.stdout) == (0, b"tool ran\n500 yes\n"), \
                result.stderr
    finally:
        profile.unlink()
