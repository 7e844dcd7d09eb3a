"""Multi-user security with real users, the real polkitd with boxd's shipped policy and rules,
real podman and the real daemon: ownership, polkit, user namespaces, private signals."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from boxd.paths import box_path
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
ERR = "io.github.boxd1.Error."
SPAWN = "ayaaya{uh}a{ss}a{sv}"


@pytest.fixture(scope="module")
def alice_sec(boxd_bed, alice):
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-sec", "", {}], user=alice["name"])
    assert "error" not in reply, reply
    assert boxd_bed.box("alice-sec", "Start", user=alice["name"]) == {"body": []}
    yield "alice-sec"
    boxd_bed.box("alice-sec", "Remove", "b", [True])


def run_as(boxd, user, *command, box="alice-sec"):
    return subprocess.run(boxctl_argv(boxd, user, "run", box, "--", *command),
                          capture_output=True, timeout=60, cwd="/")


def spawn_args(command, root=False):
    options = {"root": {"$v": ["b", True]}} if root else {}
    return [{"$b": "/"}, [{"$b": a} for a in command], {"$i": [[1, {"$fd": 1}]]}, {}, options]


def test_bob_cannot_see_enter_stop_or_remove_alices_box(boxd_bed, alice_sec, bob):
    user = bob["name"]
    for member, sig, args in [("Start", "", []), ("Stop", "", []), ("Remove", "b", [True]),
                              ("GetSettings", "", []), ("Spawn", SPAWN, spawn_args(["id"])),
                              ("Configure", "a{sv}", [{}])]:
        # To bob, alice's box is no box at all (tests/e2e/test_hostile_visibility.py).
        reply = boxd_bed.box(alice_sec, member, sig, args, user=user)
        assert reply == {"error": ERR + "NotFound",
                         "message": f"there is no box named {alice_sec!r}"}, (member, reply)
    assert boxd_bed.manager("GetBox", "s", [alice_sec], user=user)["error"] == ERR + "NotFound"
    assert boxd_bed.manager("ListBoxes", user=user)["body"][0] == []
    props = boxd_bed.call(f"/io/github/boxd1/box/{alice_sec.replace('-', '_2d')}",
                          "org.freedesktop.DBus.Properties", "GetAll", "s",
                          ["io.github.boxd1.Box"], user=user)
    assert props["error"] == ERR + "NotFound"
    for interface in ("", "org.freedesktop.DBus.Properties"):
        props = boxd_bed.call(f"/io/github/boxd1/box/{alice_sec.replace('-', '_2d')}",
                              "org.freedesktop.DBus.Properties", "GetAll", "s", [interface],
                              user=user)
        assert "error" in props and "body" not in props, props
    objects = boxd_bed.call("/io/github/boxd1", "org.freedesktop.DBus.ObjectManager",
                            "GetManagedObjects", user=user)
    assert objects == {"body": [{}]}
    result = run_as(boxd_bed, user, "true")
    assert result.returncode == 1
    assert f"there is no box named {alice_sec!r}".encode() in result.stderr
    # Nothing changed: still running, still alice's.
    assert boxd_bed.podman.inspect(alice_sec)["State"]["Status"] == "running"


def test_admin_may_per_the_shipped_rules(boxd_bed, alice_sec, alice, admin):
    user = admin["name"]
    assert "error" not in boxd_bed.manager("GetBox", "s", [alice_sec], user=user)
    assert alice_sec in [b[1] for b in boxd_bed.manager("ListBoxes", user=user)["body"][0]]
    result = run_as(boxd_bed, user, "id", "-un")
    assert (result.returncode, result.stdout.decode().strip()) == (0, alice["name"])
    result = subprocess.run(boxctl_argv(boxd_bed, user, "run", alice_sec, "--", "id", "-u"),
                            capture_output=True, timeout=60, cwd="/")
    assert result.stdout.strip() == str(alice["uid"]).encode()


def test_spawn_as_root_needs_the_admin_action(boxd_bed, alice_sec, alice, admin):
    reply = boxd_bed.box(alice_sec, "Spawn", SPAWN, spawn_args(["id", "-u"], root=True),
                         user=alice["name"])
    assert reply["error"] == ERR + "AccessDenied"
    assert "as root" in reply["message"]
    reply = boxd_bed.box(alice_sec, "Spawn", SPAWN, spawn_args(["true"], root=True),
                         user=admin["name"])
    assert "error" not in reply, reply


def test_a_user_outside_the_groups_is_denied(boxd_bed, carol):
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["carol-box", "", {}], user=carol["name"])
    assert reply == {"error": ERR + "AccessDenied",
                     "message": "you are not allowed to create boxes"}
    assert boxd_bed.podman.cli("container", "exists", "carol-box",
                               check=False).returncode == 1


def test_root_in_the_box_is_not_root_on_the_host(boxd_bed, alice_sec, alice, bob):
    user = alice["name"]
    assert run_as(boxd_bed, user, "sudo", "-n", "id", "-u").stdout.strip() == b"0"
    pwned = Path("/etc/boxd-pwned")
    result = run_as(boxd_bed, user, "sudo", "-n", "touch", "/run/host/etc/boxd-pwned")
    assert result.returncode != 0 and not pwned.exists()
    result = run_as(boxd_bed, user, "sudo", "-n", "cat", "/run/host/etc/shadow")
    assert result.returncode != 0 and b"root:" not in result.stdout
    target = Path(bob["home"]) / "from-alice"
    result = run_as(boxd_bed, user, "sudo", "-n", "sh", "-c",
                    f"echo x > /run/host{target}")
    assert result.returncode != 0 and not target.exists()
    # The box's root is an unprivileged host uid from alice's own range.
    pid = boxd_bed.podman.inspect(alice_sec)["State"]["Pid"]
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert uid_map[:3] == ["0", uid_map[1], str(alice["uid"])]
    assert int(uid_map[1]) >= 1_500_000_000


@pytest.mark.parametrize("volume, message", [
    ("/run/podman:/p", "off limits"),
    ("/run/boxd-test/podman.sock:/p.sock", "off limits"),
    ("/var/tmp/boxd-test/bus:/bus", "does not exist"),
    ("/etc:/host-etc", "off limits"),
    ("/root:/r", "off limits"),
    ("/home/boxd-bob:/bob", "another user's home"),
])
def test_volumes_that_reach_for_the_host_are_refused(boxd_bed, alice, volume, message):
    if "bus" in volume:  # the test bus dir is under /var/tmp; the real one is /run/dbus
        volume = "/run/dbus:/bus"
        message = "off limits"
    reply = boxd_bed.manager("CreateBox", "ssa{sv}",
                             ["alice-vol", "", {"volumes": {"$v": ["as", [volume]]}}],
                             user=alice["name"])
    assert reply["error"] == ERR + "InvalidArgument", reply
    assert message in reply["message"]
    assert boxd_bed.podman.cli("container", "exists", "alice-vol", check=False).returncode == 1


def test_a_symlink_in_the_home_cannot_smuggle_a_volume(boxd_bed, alice):
    link = Path(alice["home"]) / "etc-link"
    if not link.is_symlink():
        os.symlink("/etc", link)
    reply = boxd_bed.manager("CreateBox", "ssa{sv}",
                             ["alice-vol", "", {"volumes": {"$v": ["as", [f"{link}:/x"]]}}],
                             user=alice["name"])
    assert reply["error"] == ERR + "InvalidArgument"


def test_box_signals_reach_the_owner_only(boxd_bed, alice, bob):
    bobs = boxd_bed.listen(bob["name"])
    alices = boxd_bed.listen(alice["name"])
    user = alice["name"]
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-priv", "", {}],
                                           user=user)
    boxd_bed.box("alice-priv", "Remove", "b", [True], user=user)
    seen_by_alice = alices.until("InterfacesRemoved", box_path("alice-priv"))
    seen_by_bob = bobs.finish()  # all boxd sent bob until after alice saw the last signal
    alices.finish()
    assert [s for s in seen_by_bob if "alice" in json.dumps(s)] == []
    members = [s["member"] for s in seen_by_alice]
    assert "InterfacesAdded" in members and "InterfacesRemoved" in members


def test_burst_of_denied_calls_and_memory_stays_flat(boxd_bed, alice_sec, bob):
    boxd_bed.box(alice_sec, "Stop", user=bob["name"], repeat=50)  # warm up
    before = boxd_bed.rss_kib()
    reply = boxd_bed.box(alice_sec, "Stop", user=bob["name"], repeat=200)
    assert reply["error"] == ERR + "NotFound"
    after = boxd_bed.rss_kib()
    print(f"daemon RSS {before} KiB -> {after} KiB over 200 denied calls")
    assert after - before < 4096, f"RSS grew by {after - before} KiB"
    assert boxd_bed.daemon.alive()
    assert boxd_bed.podman.inspect(alice_sec)["State"]["Status"] == "running"


def test_polkit_down_means_denied_with_a_clear_error(boxd_bed, alice):
    boxd_bed.polkit.stop()
    try:
        reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-nopk", "", {}],
                                 user=alice["name"])
        assert reply["error"] == ERR + "AccessDenied"
        assert "cannot ask polkit" in reply["message"]
        assert boxd_bed.daemon.alive()
    finally:
        boxd_bed.polkit.start()
    reply = boxd_bed.manager("ListBoxes", user=alice["name"])
    assert "error" not in reply


def test_each_user_gets_a_default_box_of_their_own(boxd_bed, alice, bob):
    """Box names are one namespace on the machine: `boxctl create` and `boxctl run` with no name
    work for two users at once, each in a box of their own."""
    def boxctl(user, *args):
        return subprocess.run(boxctl_argv(boxd_bed, user, *args), capture_output=True,
                              timeout=180, cwd="/")

    for user in (alice["name"], bob["name"]):
        boxctl(user, "rm", "-f", f"{user}-box")  # left by an interrupted run
    missing = boxctl(alice["name"], "enter")
    assert missing.returncode == 1
    assert f"your default box, {alice['name']}-box: create it with 'boxctl create'" in \
        missing.stderr.decode(), missing.stderr
    assert missing.stderr.decode().count("\n") == 1
    try:
        for user in (alice["name"], bob["name"]):
            created = boxctl(user, "create")
            assert created.returncode == 0, created.stderr
            assert f"Created box {user}-box".encode() in created.stdout
        for user, other in ((alice["name"], bob["name"]), (bob["name"], alice["name"])):
            ran = boxctl(user, "run", "-q", "id", "-un")
            assert (ran.returncode, ran.stdout) == (0, f"{user}\n".encode()), ran.stderr
            listed = boxctl(user, "list", "-q").stdout.decode().split()
            assert f"{user}-box" in listed and f"{other}-box" not in listed, listed
    finally:
        for user in (alice["name"], bob["name"]):
            boxctl(user, "rm", "-f", f"{user}-box")
