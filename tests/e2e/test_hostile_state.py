"""boxd's state on disk against hostile names, real users and the real daemon: one root-only
directory per box, so no box name reaches another box's records; the old flat layout migrated at
start; box owners' id ranges registered in /etc/subuid and /etc/subgid and refused when they
collide with the host's."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bed import DEBIAN_IMAGE
from boxd import podman
from boxd.model import BoxSettings, IdRange, Owner, container_spec
from boxd.subids import SubidAllocator

pytestmark = pytest.mark.e2e
ERR = "io.github.boxd1.Error."
SIZE = 65536


def state_dir(boxd) -> Path:
    return boxd.daemon.root / "state"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def create(boxd, name, user):
    reply = boxd.manager("CreateBox", "ssa{sv}", [name, "", {}], user=user)
    assert "error" not in reply, reply


def configure_env(boxd, name, user, env):
    reply = boxd.box(name, "Configure", "a{sv}", [{"env": {"$v": ["a{ss}", env]}}], user=user)
    assert reply == {"body": []}, reply


def env_of(boxd, name, user):
    reply = boxd.box(name, "GetSettings", user=user)
    assert "error" not in reply, reply
    return reply["body"][0]["env"]


def remove(boxd, name, user=None):
    boxd.box(name, "Remove", "b", [True], user=user)


def restart(boxd):
    """The daemon stopped and started again, as a service restart does (boxes keep running)."""
    boxd.daemon.stop()
    boxd.daemon.start()


def range_of(boxd, uid) -> IdRange:
    # Whichever record format is on disk; base and size only matter for new owners.
    return SubidAllocator(state_dir(boxd) / "subids.json", 1 << 31, SIZE).known()[uid]


def test_names_like_records_are_other_boxes_and_touch_nothing_of_anothers(boxd_bed, alice, bob):
    boxd, a, b = boxd_bed, alice["name"], bob["name"]
    create(boxd, "st-dev", a)
    configure_env(boxd, "st-dev", a, {"WHO": "alice"})
    launcher = boxd.box("st-dev", "GenerateEntry", user=a)  # an exports record (starts the box)
    assert "error" not in launcher, launcher
    files = launcher["body"][0]
    hostile = ["st-dev.exports", "st-dev.json", "st-dev.exports.json", "st-dev.tmp",
               "st-x.json", "st-x.exports"]
    try:
        for name in hostile:
            create(boxd, name, b)
            configure_env(boxd, name, b, {"WHO": "bob"})
        create(boxd, "st-x", a)
        configure_env(boxd, "st-x", a, {"WHO": "alice-x"})
        assert env_of(boxd, "st-dev", a) == {"WHO": "alice"}
        assert env_of(boxd, "st-x", a) == {"WHO": "alice-x"}
        exports = boxd.box("st-dev", "ListExports", user=a)
        assert exports["body"][0] == [["launcher", "st-dev", files]], exports
        for name in hostile:
            assert env_of(boxd, name, b) == {"WHO": "bob"}
            record = state_dir(boxd) / "box" / name / "settings.json"
            assert json.loads(record.read_text())["env"] == {"WHO": "bob"}
        # Every name is a directory of its own and nothing else lies next to them.
        assert {"st-dev", "st-x", *hostile} <= set(os.listdir(state_dir(boxd) / "box"))
        assert all((state_dir(boxd) / "box" / n).is_dir() for n in os.listdir(state_dir(boxd) /
                                                                              "box"))
        for name in hostile:
            remove(boxd, name, b)
        assert env_of(boxd, "st-dev", a) == {"WHO": "alice"}
        assert boxd.box("st-dev", "ListExports", user=a)["body"][0][0][1] == "st-dev"
    finally:
        for name in hostile:
            remove(boxd, name)
    # The victim's remove still works and takes its launcher with it.
    assert boxd.box("st-dev", "Remove", "b", [True], user=a) == {"body": []}
    assert not any(Path(f).exists() for f in files)
    assert not (state_dir(boxd) / "box" / "st-dev").exists()
    remove(boxd, "st-x", a)


@pytest.mark.parametrize("name", ["a" * 255, "a" * 64, "bøx", "日本語", "box\u202egpj", "x/../y",
                                  ".x", "..", "x y", "-x"])
def test_long_and_unicode_names_are_refused_by_name(boxd_bed, alice, name):
    before = set(os.listdir(state_dir(boxd_bed) / "box"))
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", [name, "", {}], user=alice["name"])
    assert reply.get("error") == ERR + "InvalidArgument", reply
    assert set(os.listdir(state_dir(boxd_bed) / "box")) == before


def test_the_longest_name_the_rule_allows_is_a_box(boxd_bed, alice):
    name = "s" * 63
    create(boxd_bed, name, alice["name"])
    try:
        assert (state_dir(boxd_bed) / "box" / name / "settings.json").is_file()
    finally:
        remove(boxd_bed, name, alice["name"])
    assert not (state_dir(boxd_bed) / "box" / name).exists()


def test_state_is_root_only_and_the_box_still_reads_its_config(boxd_bed, alice, bob):
    boxd, a = boxd_bed, alice["name"]
    create(boxd, "st-modes", a)
    try:
        assert boxd.box("st-modes", "Start", user=a) == {"body": []}
        root = state_dir(boxd)
        box = root / "box" / "st-modes"
        assert mode(root) == 0o700 and mode(root / "box") == 0o700 and mode(box) == 0o700
        assert mode(box / "settings.json") == 0o600 and os.stat(box / "settings.json").st_uid == 0
        assert mode(root / "subids.json") == 0o600
        config = box / "config"
        assert mode(config) == 0o750 and mode(config / "box.conf") == 0o640
        # The group is the box root's host gid: root in the box reads it, through the bind.
        assert os.stat(config).st_gid == range_of(boxd, alice["uid"]).host_start
        assert boxd.exec_in("st-modes", "cat /run/boxd/config/box.conf").stdout
        for path in (root, box / "settings.json", config / "box.conf"):
            result = subprocess.run(["runuser", "-u", bob["name"], "--", "cat", str(path)],
                                    capture_output=True, timeout=60)
            assert result.returncode != 0 and b"denied" in result.stderr.lower()
    finally:
        remove(boxd, "st-modes", a)


async def _create_container(socket: str, spec: dict) -> None:
    client = podman.PodmanClient(socket)
    try:
        await client.create_container(spec)
    finally:
        await client.aclose()


def test_the_old_flat_layout_is_migrated_at_start(boxd_bed, alice):
    """Boxes made by the boxd before this layout: records named after boxes side by side in
    <state>/boxes, containers binding <state>/boxes/NAME, subids.json in its first format."""
    boxd, a, uid = boxd_bed, alice["name"], alice["uid"]
    create(boxd, "st-new", a)  # made in the new layout; also gives alice a range if she had none
    configure_env(boxd, "st-new", a, {"NEW": "1"})
    rng = range_of(boxd, uid)
    base = boxd.daemon.extra_config["subid_base"]
    old = state_dir(boxd) / "boxes"
    boxd.daemon.stop()
    try:
        old.mkdir(mode=0o755, exist_ok=True)
        owner = Owner.lookup(uid)
        for name in ("st-legacy", "st-legacy.exports"):
            config = old / name
            config.mkdir(mode=0o750)
            os.chown(config, 0, rng.host_start)
            spec = container_spec(name=name, image=DEBIAN_IMAGE, owner=owner,
                                  settings=BoxSettings(), config_dir=config, id_range=rng,
                                  stop_timeout=5, extra_labels={})
            asyncio.run(_create_container(boxd.podman.socket, spec))
        (old / "st-legacy.json").write_text(json.dumps(
            {**BoxSettings().to_json(), "env": {"LEGACY": "kept"}}))
        tool = f"{alice['home']}/.local/bin/st-tool"
        # Box st-legacy's exports record; box st-legacy.exports' settings would have been here too.
        (old / "st-legacy.exports.json").write_text(json.dumps(
            [{"kind": "bin", "name": "st-tool", "files": [tool]}]))
        ranges = SubidAllocator(state_dir(boxd) / "subids.json", base, SIZE).known()
        assert all((r.host_start - base) % SIZE == 0 for r in ranges.values())
        (state_dir(boxd) / "subids.json").write_text(json.dumps(
            {"base": base, "size": SIZE,
             "slots": {str(u): (r.host_start - base) // SIZE for u, r in ranges.items()}}))
    finally:
        boxd.daemon.start()
    try:
        names = boxd.manager("ListBoxes", user=a)["body"][0]
        assert "st-legacy" in str(names) and "st-legacy.exports" in str(names)
        assert env_of(boxd, "st-legacy", a) == {"LEGACY": "kept"}
        assert env_of(boxd, "st-legacy.exports", a) == {}
        assert env_of(boxd, "st-new", a) == {"NEW": "1"}
        assert boxd.box("st-legacy", "ListExports", user=a)["body"][0] == \
            [["bin", "st-tool", [tool]]]
        box = state_dir(boxd) / "box" / "st-legacy"
        assert mode(box) == 0o700 and mode(box / "settings.json") == 0o600
        assert mode(old) == 0o700 and (old / "st-legacy").is_symlink()
        assert not [p for p in old.iterdir() if not p.is_symlink()]
        # The container binds the old path: it reaches the moved config dir.
        assert boxd.box("st-legacy", "Start", user=a) == {"body": []}
        got = boxd.exec_in("st-legacy", ". /etc/profile.d/boxd-env.sh; echo \"$LEGACY\"",
                           uid=uid).stdout.decode().strip()
        assert got == "kept"
        # Alice's range did not move: her new box maps where her old ones do.
        create(boxd, "st-after", a)
        assert os.stat(state_dir(boxd) / "box" / "st-after" / "config").st_gid == rng.host_start
        assert range_of(boxd, uid) == rng
    finally:
        for name in ("st-legacy", "st-legacy.exports", "st-new", "st-after"):
            remove(boxd, name, a)
    assert not os.path.lexists(old / "st-legacy")


def test_id_ranges_are_registered_and_a_collision_is_refused(boxd_bed, alice, bob):
    boxd, a = boxd_bed, alice["name"]
    create(boxd, "st-ids", a)
    rng = range_of(boxd, alice["uid"])
    restart(boxd)  # the unit registers at every start (ExecStartPre=+boxd --register-subids)
    # Under boxd's own name, not alice's: her rootless podman would map what is hers.
    line = f"_boxd:{rng.host_start}:{rng.size}"
    for path in ("/etc/subuid", "/etc/subgid"):
        assert line in Path(path).read_text().splitlines(), path
    intruder = f"{bob['name']}:{rng.host_start + 100}:1"
    subgid = Path("/etc/subgid")
    boxd.daemon.stop()
    try:
        subgid.write_text(subgid.read_text() + intruder + "\n")
        boxd.daemon.start()
        reply = boxd.box("st-ids", "Start", user=a)
        assert reply.get("error") == ERR + "IdCollision", reply
        assert bob["name"] in reply["message"] and "/etc/subgid" in reply["message"]
        reply = boxd.manager("CreateBox", "ssa{sv}", ["st-ids2", "", {}], user=a)
        assert reply.get("error") == ERR + "IdCollision", reply
        assert "st-ids2" not in os.listdir(state_dir(boxd) / "box")
    finally:
        subgid.write_text("".join(f"{x}\n" for x in subgid.read_text().splitlines()
                                  if x != intruder))
    try:
        assert boxd.box("st-ids", "Start", user=a) == {"body": []}  # a failed check is not kept
    finally:
        remove(boxd, "st-ids", a)
