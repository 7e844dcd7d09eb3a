"""boxd/state.py: one directory per box, atomic writes, modes, and the old flat layout's
migration. Pure file-system logic in a temporary directory."""

from __future__ import annotations

import json
import os
import stat

import pytest

from boxd import errors
from boxd.state import StateStore, atomic_write, migrate_flat_layout


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state")
    s.prepare()
    return s


def test_atomic_write_sets_the_mode_whatever_the_umask_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", "one", 0o640)
        atomic_write(tmp_path / "f", b"two", 0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_text() == "two"
    assert mode(tmp_path / "f") == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_keeps_the_old_file_when_it_fails(tmp_path, monkeypatch):
    atomic_write(tmp_path / "f", "old")

    def broken(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "f", "new")
    monkeypatch.undo()
    assert (tmp_path / "f").read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_names_that_look_like_records_are_just_other_boxes(store):
    names = ["dev", "dev.exports", "dev.exports.json", "x", "x.json", "x.tmp", "box", "config"]
    for i, name in enumerate(names):
        store.write_settings(name, {"env": {"N": str(i)}})
        store.write_exports(name, [{"kind": "bin", "name": f"p{i}", "files": []}])
    for i, name in enumerate(names):
        assert store.read_settings(name) == {"env": {"N": str(i)}}
        assert store.read_exports(name) == [{"kind": "bin", "name": f"p{i}", "files": []}]
    assert sorted(os.listdir(store.boxes)) == sorted(names)
    store.drop_box("dev.exports")
    store.drop_exports("x.json")
    assert store.read_settings("dev") == {"env": {"N": "0"}}
    assert store.read_exports("dev") == [{"kind": "bin", "name": "p0", "files": []}]
    assert store.read_exports("x") == [{"kind": "bin", "name": "p3", "files": []}]
    assert store.read_settings("dev.exports") is None and store.read_exports("x.json") == []


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "-x", "x" * 64,
                                  "x" * 255, "bøx", "日本", "a\0b", "a b"])
def test_names_outside_the_rule_never_become_paths(store, name):
    with pytest.raises(errors.InvalidArgument):
        store.box_dir(name)
    with pytest.raises(errors.InvalidArgument):
        store.write_settings(name, {})


def test_modes(store):
    store.create_box("dev", os.getgid())
    store.write_settings("dev", {})
    store.write_exports("dev", [])
    store.write_box_conf("dev", "BOX=dev\n")
    assert mode(store.root) == 0o700
    assert mode(store.boxes) == 0o700
    assert mode(store.box_dir("dev")) == 0o700
    assert mode(store.box_dir("dev") / "settings.json") == 0o600
    assert mode(store.box_dir("dev") / "exports.json") == 0o600
    assert mode(store.config_dir("dev")) == 0o750  # the box's root reads it (group)
    assert mode(store.config_dir("dev") / "box.conf") == 0o640


def test_prepare_narrows_an_old_world_readable_state_dir(tmp_path):
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    (root / "subids.json").write_text("{}")
    os.chmod(root / "subids.json", 0o644)
    StateStore(root).prepare()
    assert mode(root) == 0o700 and mode(root / "subids.json") == 0o600


def _old_layout(root):
    """What boxd wrote before: <state>/boxes/{NAME.json, NAME.exports.json, NAME/box.conf}."""
    old = root / "boxes"
    old.mkdir(parents=True)
    os.chmod(old, 0o755)
    for name in ("dev", "dev.exports", "x.json", "solo"):
        (old / name).mkdir(mode=0o750)
        (old / name / "box.conf").write_text(f"BOX={name}\n")
    (old / "dev.json").write_text(json.dumps({"env": {"WHO": "dev"}}))
    # dev's exports record and dev.exports' settings shared this name; the settings won last.
    (old / "dev.exports.json").write_text(json.dumps({"env": {"WHO": "dev.exports"}}))
    (old / "x.json.json").write_text(json.dumps({"env": {"WHO": "x.json"}}))
    (old / "x.json.exports.json").write_text(json.dumps(
        [{"kind": "launcher", "name": "x.json", "files": ["/home/a/x.desktop"]}]))
    (old / "solo.exports.json").write_text(json.dumps(
        [{"kind": "bin", "name": "tool", "files": ["/home/a/.local/bin/tool"]}]))
    (old / "gone.json").write_text("{}")  # a leftover without a box: left alone
    return old


def test_migration_of_the_flat_layout(tmp_path):
    root = tmp_path / "state"
    old = _old_layout(root)
    store = StateStore(root)
    store.prepare()
    assert store.read_settings("dev") == {"env": {"WHO": "dev"}}
    assert store.read_exports("dev") == []  # lost before the upgrade, not invented
    assert store.read_settings("dev.exports") == {"env": {"WHO": "dev.exports"}}
    assert store.read_settings("x.json") == {"env": {"WHO": "x.json"}}
    assert store.read_exports("x.json")[0]["name"] == "x.json"
    assert store.read_settings("solo") is None
    assert store.read_exports("solo")[0]["name"] == "tool"
    for name in ("dev", "dev.exports", "x.json", "solo"):
        # The config dir moved; its old path (which the box's container binds) leads to it.
        assert (store.config_dir(name) / "box.conf").read_text() == f"BOX={name}\n"
        assert (old / name).is_symlink()
        assert (old / name).resolve() == store.config_dir(name).resolve()
        assert mode(store.box_dir(name)) == 0o700
    assert sorted(p.name for p in old.iterdir() if not p.is_symlink()) == ["gone.json"]
    assert mode(old) == 0o700
    # Idempotent: a second start changes nothing, and the new layout wins over leftovers.
    store.write_settings("dev", {"env": {"WHO": "new"}})
    (old / "dev.json").write_text(json.dumps({"env": {"WHO": "stale"}}))
    store.prepare()
    assert store.read_settings("dev") == {"env": {"WHO": "new"}}
    store.write_box_conf("dev", "BOX=dev2\n")
    assert (old / "dev" / "box.conf").read_text() == "BOX=dev2\n"
    store.drop_box("dev")
    assert not os.path.lexists(old / "dev") and not store.box_dir("dev").exists()


def test_migration_finishes_after_a_crash_between_its_steps(tmp_path):
    root = tmp_path / "state"
    old = _old_layout(root)
    store = StateStore(root)
    store.boxes.mkdir(mode=0o700)
    # Crashed after moving solo's config dir, before its old path became a link.
    store.box_dir("solo").mkdir()
    (old / ".solo.boxd-link").symlink_to("../box/solo/config")
    os.rename(old / "solo", store.config_dir("solo"))
    assert migrate_flat_layout(store)
    assert (old / "solo").is_symlink() and (old / "solo" / "box.conf").read_text() == "BOX=solo\n"
    assert not os.path.lexists(old / ".solo.boxd-link")
    assert store.read_exports("solo")[0]["name"] == "tool"
    assert migrate_flat_layout(store) == []  # nothing left to do


def test_no_old_layout_is_no_migration(store):
    assert migrate_flat_layout(store) == []


def test_the_state_dir_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    store = StateStore(tmp_path / "link")
    store.prepare()
    store.write_settings("dev", {"env": {}})
    assert (tmp_path / "real" / "box" / "dev" / "settings.json").is_file()
    assert mode(tmp_path / "real") == 0o700
