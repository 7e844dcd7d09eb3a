"""Per-user caps: one user cannot exhaust the host. Pure logic, so a stub stands in for podman;
nothing here reaches podman before the cap says no."""

import asyncio
import os

import pytest

from boxd import errors
from boxd.config import Config
from boxd.manager import BoxInfo, BoxManager
from boxd.model import Owner
from boxd.sessions import Session


class NoPodman:
    def __getattr__(self, name):
        raise AssertionError(f"podman was called ({name}) although the cap should stop first")


def owner(uid: int) -> Owner:
    return Owner(uid, uid, f"u{uid}", "/", "/bin/sh", f"u{uid}")


def test_box_cap(tmp_path):
    config = Config(state_dir=str(tmp_path), max_boxes_per_user=2, userns=False)
    manager = BoxManager(config, NoPodman(), owner_lookup=owner)
    for i in range(2):
        manager._upsert(BoxInfo(f"b{i}", f"id{i}", "img", 1000, "stopped", 0, "0.1.0"))
    manager._upsert(BoxInfo("other", "id9", "img", 1001, "stopped", 0, "0.1.0"))
    with pytest.raises(errors.LimitReached, match="you have 2 boxes already"):
        asyncio.run(manager.create(1000, "third", "img", {}))


def test_session_cap(tmp_path):
    config = Config(state_dir=str(tmp_path), max_sessions_per_user=1, userns=False)
    manager = BoxManager(config, NoPodman(), owner_lookup=owner)
    manager._upsert(BoxInfo("b", "id1", "img", 1000, "running", 0, "0.1.0"))
    manager.sessions._sessions["1"] = Session(id="1", box="b", caller_uid=1000,
                                              caller_sender=":1.1", tty=False)
    read, write = os.pipe()
    with pytest.raises(errors.LimitReached, match="1 sessions open already"):
        asyncio.run(manager.spawn("b", caller_uid=1000, caller_sender=":1.2", argv=["true"],
                                  cwd="/", env={}, fds={1: write}, tty=False,
                                  login_shell=False))
    os.close(read)
    with pytest.raises(OSError):  # the handed-over fd was closed, not leaked
        os.fstat(write)
