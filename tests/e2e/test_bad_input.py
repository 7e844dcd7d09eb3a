"""Bad input gets a named io.github.boxd1.Error and changes nothing; the daemon stays up."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e

ERR = "io.github.boxd1.Error."


def box_names(boxd):
    return sorted(b[1] for b in boxd.manager("ListBoxes")["body"][0])


# (over 4096 bytes, a name is Error.TooLarge: tests/e2e/test_hostile.py)
@pytest.mark.parametrize("name", ["../etc", "a/b", "-rf", "x" * 4000, "ünï", "a\u202eb", ""])
def test_invalid_names(boxd_bed, alice, name):
    before = box_names(boxd_bed)
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", [name, "", {}], user=alice["name"])
    assert reply["error"] == ERR + "InvalidArgument"
    assert "invalid box name" in reply["message"]
    assert box_names(boxd_bed) == before


def test_unknown_box(boxd_bed, alice):
    reply = boxd_bed.manager("GetBox", "s", ["no-such-box"], user=alice["name"])
    assert reply == {"error": ERR + "NotFound", "message": "there is no box named 'no-such-box'"}
    reply = boxd_bed.box("no-such-box", "Start", user=alice["name"])
    assert reply["error"] == ERR + "NotFound"


def test_duplicate_name(boxd_bed, alice):
    user = alice["name"]
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-dup", "", {}],
                                           user=user)
    box_id = boxd_bed.podman.inspect("alice-dup")["Id"]
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-dup", "", {}], user=user)
    assert reply["error"] == ERR + "AlreadyExists"
    assert boxd_bed.podman.inspect("alice-dup")["Id"] == box_id
    assert boxd_bed.box("alice-dup", "Remove", "b", [True], user=user) == {"body": []}


def test_a_name_taken_by_a_foreign_container(boxd_bed, alice):
    boxd_bed.podman.cli("create", "--name", "not-a-box", "localhost/boxd-busybox:latest", "true")
    try:
        reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["not-a-box", "", {}],
                                 user=alice["name"])
        assert reply["error"] == ERR + "AlreadyExists"
        assert "not-a-box" not in box_names(boxd_bed)
    finally:
        boxd_bed.podman.cli("rm", "-f", "not-a-box")


def test_missing_image(boxd_bed, alice):
    before = box_names(boxd_bed)
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-noimg", "localhost/nope:1", {}],
                             user=alice["name"])
    assert reply["error"] == ERR + "ImageNotFound"
    assert box_names(boxd_bed) == before


@pytest.mark.parametrize("options, message", [
    ({"volumes": {"$v": ["s", "/a:/b"]}}, "must be of type as"),
    ({"colour": {"$v": ["s", "red"]}}, "unknown option"),
    ({"volumes": {"$v": ["as", ["/etc/../root:/x"]]}}, "must not contain '..'"),
    ({"env": {"$v": ["a{ss}", {"LD PRELOAD": "x"}]}}, "environment variable name"),
    ({"home": {"$v": ["s", "/nonexistent-home"]}}, "does not exist"),
])
def test_bad_options(boxd_bed, alice, options, message):
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-opts", "", options],
                             user=alice["name"])
    assert reply["error"] == ERR + "InvalidArgument"
    assert message in reply["message"]
    assert "alice-opts" not in box_names(boxd_bed)


def test_wrong_argument_types_from_busctl(boxd_bed):
    result = boxd_bed.busctl("call", "io.github.boxd1", "/io/github/boxd1",
                             "io.github.boxd1.Manager", "CreateBox", "si", "x", "3", check=False)
    assert result.returncode != 0
    assert "CreateBox takes arguments of type (ssa{sv}), not (si)" in result.stderr
    reply = boxd_bed.manager("GetBox", "u", [7])
    assert reply["error"] == ERR + "InvalidArgument"
    reply = boxd_bed.manager("Explode")
    assert reply["error"] == ERR + "UnknownMethod"
    assert "Traceback" not in reply["message"]


def test_podman_down_then_back(boxd_bed, alice):
    boxd = boxd_bed
    user = alice["name"]
    assert "error" not in boxd.manager("CreateBox", "ssa{sv}", ["alice-pd", "", {}], user=user)
    boxd.podman.stop()
    try:
        reply = boxd.manager("CreateBox", "ssa{sv}", ["alice-pd2", "", {}], user=user)
        assert reply["error"] == ERR + "PodmanUnavailable"
        assert "podman is not reachable" in reply["message"]
        assert boxd.box("alice-pd", "Start", user=user)["error"] == ERR + "PodmanUnavailable"
        assert boxd.daemon.alive()
        available = boxd.busctl("get-property", "io.github.boxd1", "/io/github/boxd1",
                                "io.github.boxd1.Manager", "PodmanAvailable").stdout.strip()
        assert available == "b false"
    finally:
        boxd.podman.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if boxd.busctl("get-property", "io.github.boxd1", "/io/github/boxd1",
                       "io.github.boxd1.Manager",
                       "PodmanAvailable").stdout.strip() == "b true":
            break
        time.sleep(0.1)
    assert boxd.box("alice-pd", "Start", user=user) == {"body": []}
    assert boxd.box("alice-pd", "Remove", "b", [True], user=user) == {"body": []}
    assert boxd.daemon.alive()
