"""A real user's box, end to end: real boxd on a real bus, real podman, real users."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bed import BUSYBOX_IMAGE
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e

ERR = "io.github.boxd1.Error."


def create(boxd, name, user, image="", options=None):
    reply = boxd.manager("CreateBox", "ssa{sv}", [name, image, options or {}], user=user)
    assert "error" not in reply, reply
    return reply["body"][0]


def start(boxd, name, user):
    reply = boxd.box(name, "Start", user=user)
    assert reply == {"body": []}, reply


def ready_by(boxd, name):
    """How the entry point told the daemon it was ready, per start of `name` so far."""
    return [e["ready_by"] for e in boxd.daemon.log_events("box_started") if e["box"] == name]


def assert_host_shared(boxd, name, uid):
    """The host's /tmp and machine id are the box's, each mounted once."""
    marker = Path("/tmp") / f"boxd-shared-{name}"
    marker.write_text("from the host")
    try:
        assert inside(boxd, name, f"cat {marker}", uid) == "from the host"
    finally:
        marker.unlink()
    points = inside(boxd, name, "cut -d' ' -f5 /proc/self/mountinfo", uid).split()
    assert points.count("/tmp") == 1
    if Path("/etc/machine-id").exists():
        assert inside(boxd, name, "cat /etc/machine-id", uid) == \
            Path("/etc/machine-id").read_text()
        assert points.count("/etc/machine-id") == 1


def inside(boxd, name, command, uid):
    return boxd.exec_in(name, command, uid=uid).stdout.decode()


def test_lifecycle_of_a_users_box(boxd_bed, alice):
    boxd = boxd_bed
    user, uid = alice["name"], alice["uid"]
    assert create(boxd, "alice-dev", user) == "/io/github/boxd1/box/alice_2ddev"
    state = boxd.busctl("get-property", "io.github.boxd1", "/io/github/boxd1/box/alice_2ddev",
                        "io.github.boxd1.Box", "State", user=user).stdout.strip()
    assert state == 's "stopped"'

    started = time.monotonic()
    start(boxd, "alice-dev", user)
    print(f"Start took {time.monotonic() - started:.2f} s")
    listed = boxd.manager("ListBoxes", user=user)["body"][0]
    seen = {b[1]: (b[4], b[5]) for b in listed}  # other tests' boxes of alice's may be there
    assert seen["alice-dev"] == ("running", uid)
    assert {owner for _state, owner in seen.values()} == {uid}  # only her own

    # Same user, same home, host files under /run/host, DNS and time zone from the host.
    assert inside(boxd, "alice-dev", "id -un", uid).strip() == user
    assert inside(boxd, "alice-dev", 'echo "$HOME"', uid).strip() == alice["home"]
    inside(boxd, "alice-dev", 'echo written-inside > "$HOME/from-box.txt"', uid)
    host_file = Path(alice["home"]) / "from-box.txt"
    assert host_file.read_text() == "written-inside\n"
    assert host_file.stat().st_uid == uid
    assert inside(boxd, "alice-dev", "cat /run/host/etc/os-release", uid) == \
        Path("/etc/os-release").read_text()
    assert inside(boxd, "alice-dev", "cat /etc/resolv.conf", uid) == \
        Path("/etc/resolv.conf").read_text()
    host_tz = os.path.realpath("/etc/localtime")
    assert inside(boxd, "alice-dev", "readlink /etc/localtime", uid).strip() == \
        "/run/host" + host_tz
    assert inside(boxd, "alice-dev", "date +%Z", uid) == \
        subprocess.run(["date", "+%Z"], capture_output=True, text=True).stdout
    # The box's hostname resolves inside it (sudo and X11 stall otherwise); sudo needs no password.
    assert "alice-dev" in inside(boxd, "alice-dev", "getent hosts alice-dev", uid)
    assert inside(boxd, "alice-dev", "sudo -n id -u", uid).strip() == "0"
    assert_host_shared(boxd, "alice-dev", uid)

    reply = boxd.box("alice-dev", "Stop", user=user)
    assert reply == {"body": []}, reply
    assert boxd.podman.inspect("alice-dev")["State"]["Status"] in ("exited", "stopped")

    # Start again: the entry point re-runs over the existing user and links, idempotently.
    start(boxd, "alice-dev", user)
    assert inside(boxd, "alice-dev", "id -un", uid).strip() == user
    passwd = inside(boxd, "alice-dev", "grep -c '^boxd-alice:' /etc/passwd", uid)
    assert passwd.strip() == "1"
    assert inside(boxd, "alice-dev", "grep -c 'boxd: alice-dev' /etc/hosts", uid).strip() == "1"
    assert_host_shared(boxd, "alice-dev", uid)

    reply = boxd.box("alice-dev", "Remove", "b", [False], user=user)
    assert reply["error"] == ERR + "Busy"
    reply = boxd.box("alice-dev", "Remove", "b", [True], user=user)
    assert reply == {"body": []}, reply
    assert boxd.podman.cli("container", "exists", "alice-dev", check=False).returncode == 1
    assert "alice-dev" not in [b[1] for b in boxd.manager("ListBoxes", user=user)["body"][0]]
    assert boxd.manager("GetBox", "s", ["alice-dev"], user=user)["error"] == ERR + "NotFound"


def test_busybox_image_without_useradd_comes_up(boxd_bed, alice):
    boxd = boxd_bed
    user, uid = alice["name"], alice["uid"]
    create(boxd, "alice-tiny", user, image=BUSYBOX_IMAGE)
    assert boxd.exec_in("alice-tiny", "true", check=False).returncode != 0  # not running yet
    start(boxd, "alice-tiny", user)
    assert inside(boxd, "alice-tiny", "command -v useradd || echo none", uid).strip() == "none"
    assert inside(boxd, "alice-tiny", "id -un", uid).strip() == user
    assert inside(boxd, "alice-tiny", "readlink /etc/resolv.conf", uid).strip() == \
        "/run/host/etc/resolv.conf"
    assert ready_by(boxd, "alice-tiny") == ["pipe"]  # busybox ash wrote the FIFO
    assert boxd.box("alice-tiny", "Remove", "b", [True], user=user) == {"body": []}


def test_changed_volumes_and_env_apply_on_restart_without_recreate(boxd_bed, alice, tmp_path):
    boxd = boxd_bed
    user, uid = alice["name"], alice["uid"]
    shared = Path("/srv/boxd-test-share")
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "marker").write_text("from the host\n")
    create(boxd, "alice-cfg", user)
    start(boxd, "alice-cfg", user)
    container_id = boxd.podman.inspect("alice-cfg")["Id"]
    assert boxd.exec_in("alice-cfg", "test -e /data/marker", check=False).returncode != 0

    reply = boxd.box("alice-cfg", "Configure", "a{sv}",
                     [{"volumes": {"$v": ["as", [f"{shared}:/data:ro"]]},
                       "env": {"$v": ["a{ss}", {"BOXD_TEST": "it's here"}]}}], user=user)
    assert reply == {"body": []}, reply
    settings = boxd.box("alice-cfg", "GetSettings", user=user)["body"][0]
    assert settings["volumes"] == [f"{shared}:/data:ro"]

    assert boxd.box("alice-cfg", "Stop", user=user) == {"body": []}
    start(boxd, "alice-cfg", user)
    assert boxd.podman.inspect("alice-cfg")["Id"] == container_id  # not re-created
    assert inside(boxd, "alice-cfg", "cat /data/marker", uid) == "from the host\n"
    assert boxd.exec_in("alice-cfg", "touch /data/x", check=False).returncode != 0  # read-only
    profile = inside(boxd, "alice-cfg", ". /etc/profile.d/boxd-env.sh; echo \"$BOXD_TEST\"", uid)
    assert profile == "it's here\n"
    assert boxd.box("alice-cfg", "Remove", "b", [True], user=user) == {"body": []}


def test_state_follows_podman_events(boxd_bed, alice):
    """A box stopped behind boxd's back shows as stopped: the event stream, no polling."""
    boxd = boxd_bed
    user = alice["name"]
    create(boxd, "alice-ev", user)
    start(boxd, "alice-ev", user)
    boxd.podman.cli("stop", "--time", "0", "alice-ev")
    deadline = time.monotonic() + 10
    state = ""
    while time.monotonic() < deadline:
        state = boxd.busctl("get-property", "io.github.boxd1",
                            "/io/github/boxd1/box/alice_2dev", "io.github.boxd1.Box",
                            "State").stdout.strip()
        if state == 's "stopped"':
            break
        time.sleep(0.1)
    assert state == 's "stopped"'
    assert boxd.box("alice-ev", "Remove", "b", [False], user=user) == {"body": []}


def test_a_changed_login_shell_reaches_the_box_at_its_next_start(boxd_bed, alice):
    """The entry point updates an existing user in place (the box sees the host's processes, so
    userdel would refuse while the user has any)."""
    user, uid = alice["name"], alice["uid"]
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-shell", "", {}],
                                           user=user)
    start(boxd_bed, "alice-shell", user)
    sleeper = subprocess.Popen(["runuser", "-u", user, "--", "sleep", "60"])
    try:
        subprocess.run(["usermod", "-s", "/bin/sh", user], check=True)
        assert boxd_bed.box("alice-shell", "Stop", user=user) == {"body": []}
        start(boxd_bed, "alice-shell", user)
        entry = inside(boxd_bed, "alice-shell", f"grep '^{user}:' /etc/passwd", uid)
        assert entry.strip().endswith(":/bin/sh")
    finally:
        subprocess.run(["usermod", "-s", "/bin/bash", user], check=True)
        sleeper.kill()
        boxd_bed.box("alice-shell", "Remove", "b", [True], user=user)


def test_a_quick_restart_shows_only_its_own_start(boxd_bed, alice):
    """boxctl start shows what the entry point prints on the way: of this start, not the one a
    moment ago (podman's log holds every start's lines), and never the readiness protocol."""
    user = alice["name"]
    create(boxd_bed, "alice-again", user, options={"hooks": {"$v": ["as", ["echo hook ran"]]}})
    try:
        shown = []
        for _ in range(3):
            run = subprocess.run(boxctl_argv(boxd_bed, user, "start", "alice-again"),
                                 capture_output=True, timeout=60, cwd="/")
            assert run.returncode == 0, run.stderr
            shown.append(run.stderr.decode())
            assert boxd_bed.box("alice-again", "Stop", user=user) == {"body": []}
        assert shown == ["Starting box alice-again ...\n  hook ran\n"] * 3
        # Ready came through the FIFO each time (the log follow lags), and the output shown
        # above was complete all the same.
        assert ready_by(boxd_bed, "alice-again") == ["pipe"] * 3
    finally:
        boxd_bed.box("alice-again", "Remove", "b", [True], user=user)
