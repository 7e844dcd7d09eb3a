"""Hostile user, issue 11 point 3: no path, name or signal of alice's reaches bob by any standard
D-Bus interface (busctl tree / recursive Introspect, GetManagedObjects, Properties, method calls,
signals with an ordinary match rule), while alice creates, starts, runs a session in, stops and
removes a box, and a start job of hers lingers on the bus. An administrator (boxd-admin, granted
manage-any-box by the shipped rules) and root see all of it. Real users, the real polkitd, the
real daemon and bus."""

from __future__ import annotations

import json
import subprocess

import pytest

import bed
from boxd.paths import MANAGER_PATH, box_path
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
ERR = "io.github.boxd1.Error."
NAME = "alice-vis"
PATH = box_path(NAME)
SESSION = "io.github.boxd1.Session"


def tree(boxd, user: str | None) -> list[str]:
    """Every object path `busctl tree` reaches (it introspects recursively from /)."""
    result = boxd.busctl("--list", "tree", "io.github.boxd1", user=user)
    assert "Failed" not in result.stderr, result.stderr
    return result.stdout.split()


def probes(boxd, user: str, path: str) -> list[dict]:
    """What `user` learns by poking at `path` through the standard interfaces and boxd's own."""
    calls = [("org.freedesktop.DBus.Introspectable", "Introspect", "", []),
             ("org.freedesktop.DBus.Properties", "GetAll", "s", ["io.github.boxd1.Box"]),
             ("org.freedesktop.DBus.Properties", "GetAll", "s", [SESSION]),
             ("org.freedesktop.DBus.Properties", "Get", "ss", ["io.github.boxd1.Box", "Owner"]),
             ("io.github.boxd1.Box", "GetSettings", "", []),
             ("io.github.boxd1.Box", "Start", "s", ["wrong signature"]),
             ("io.github.boxd1.Box", "NoSuchMethod", "", []),
             (SESSION, "Signal", "i", [0]),
             ("io.github.boxd1.Job", "Cancel", "", [])]
    return [boxd.call(path, *call, user=user) for call in calls]


def managed_objects(boxd, user: str | None) -> dict:
    reply = boxd.call(MANAGER_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                      user=user)
    return reply["body"][0]


def bob_sees_nothing_of(boxd, bob: str, paths: list[str]) -> None:
    seen = tree(boxd, bob)
    assert not [p for p in seen if p in paths or "alice" in p or "/job/" in p
                or "/session/" in p], seen
    assert not [p for p in managed_objects(boxd, bob) if "alice" in p]
    for path in paths:
        assert all(r["error"] == ERR + "NotFound" for r in probes(boxd, bob, path)), path


def others_see(boxd, users: list[str | None], paths: list[str]) -> None:
    for user in users:
        seen = tree(boxd, user)
        assert set(paths) <= set(seen), (user, seen)
        assert PATH in managed_objects(boxd, user)
        props = boxd.call(PATH, "org.freedesktop.DBus.Properties", "GetAll", "s",
                          ["io.github.boxd1.Box"], user=user)
        assert props["body"][0]["Name"] == NAME, (user, props)


def test_alices_box_job_and_session_are_invisible_to_bob(boxd_bed, alice, bob, admin):
    owner, other, boss = alice["name"], bob["name"], admin["name"]
    boxd_bed.box(NAME, "Remove", "b", [True])  # left by an interrupted run
    before = probes(boxd_bed, other, PATH)  # no such box yet
    listeners = {user: boxd_bed.listen(user) for user in (owner, other, boss)}
    session, sessions = None, []
    try:
        reply = boxd_bed.manager("CreateBox", "ssa{sv}", [NAME, "", {}], user=owner)
        assert reply == {"body": [PATH]}, reply
        # Started through a Job (boxctl start follows it); the job lingers on the bus after.
        started = subprocess.run(boxctl_argv(boxd_bed, owner, "start", NAME),
                                 capture_output=True, timeout=300, cwd="/")
        assert started.returncode == 0, started.stderr
        jobs = [p for p in tree(boxd_bed, owner) if "/job/" in p]
        assert jobs, "alice's start job is not on the bus"
        bob_sees_nothing_of(boxd_bed, other, [PATH, *jobs])
        others_see(boxd_bed, [boss, None], [PATH, *jobs])

        # A session of alice's, running until the test lets it end (a file in the box's own
        # /var/tmp: /tmp is the host's).
        session = subprocess.Popen(boxctl_argv(boxd_bed, owner, "run", NAME, "--", "sh", "-c",
                                               "until [ -e /var/tmp/vis-done ]; do sleep 0.2; "
                                               "done"),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, cwd="/")
        def alice_has_a_session() -> bool:
            sessions[:] = [p for p in tree(boxd_bed, owner) if "/session/" in p]
            return bool(sessions)

        bed.wait_for(alice_has_a_session, 120, "alice's session on the bus", interval=0.5)
        bob_sees_nothing_of(boxd_bed, other, [PATH, *sessions])
        others_see(boxd_bed, [boss, None], [PATH, *sessions])
        # Bob cannot end it, nor tell it from no session at all.
        for path in sessions:
            reply = boxd_bed.call(path, SESSION, "Signal", "i", [15], user=other)
            assert reply["error"] == ERR + "NotFound", reply
        boxd_bed.exec_in(NAME, "touch /var/tmp/vis-done")
        assert session.wait(timeout=120) == 0

        assert boxd_bed.box(NAME, "Stop", user=owner) == {"body": []}
        during = probes(boxd_bed, other, PATH)
        assert boxd_bed.box(NAME, "Remove", "b", [False], user=owner) == {"body": []}
        # What bob learns about her box is exactly what he learns about no box at all.
        assert during == probes(boxd_bed, other, PATH) == before
        seen = {user: listeners[user].until("InterfacesRemoved", PATH)
                for user in (owner, boss)}
        seen[other] = listeners[other].finish()  # all boxd sent bob up to now
        for user in (owner, boss):
            members = [(s["member"], s["path"]) for s in seen[user]]
            assert ("InterfacesAdded", MANAGER_PATH) in members, (user, members)
            assert ("PropertiesChanged", PATH) in members, (user, members)
        about_boxes = [s for s in seen[other]
                       if s["path"] != MANAGER_PATH or s["member"] != "PropertiesChanged"]
        assert about_boxes == [], about_boxes
        assert "alice" not in json.dumps(seen[other])
    finally:
        boxd_bed.box(NAME, "Remove", "b", [True])  # also ends a session left running
        if session is not None:
            session.wait(timeout=120)
        for listener in listeners.values():
            if listener.proc.poll() is None:
                listener.proc.stdin.close()
                listener.proc.wait(timeout=30)
