"""boxd-admin is not host root: acting as the owner of root's boxes is root's alone."""

from __future__ import annotations

import pytest

from boxd import authz
from boxd.authz import Authorizer, Caller
from boxd.errors import AccessDenied


class YesToAll:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def check(self, sender: str, action: str, details: dict[str, str],
                    interactive: bool) -> bool:
        self.asked.append(action)
        return True


ADMIN = Caller(sender=":1.7", uid=2103, pid=1, allow_interactive=False)
ROOT = Caller(sender=":1.8", uid=0, pid=1, allow_interactive=False)


async def test_an_admin_may_not_act_as_root_in_roots_box() -> None:
    policy = YesToAll()
    checker = Authorizer("system", 0, policy)
    for action in (authz.SPAWN_OWN_BOX, authz.SPAWN_AS_ROOT, authz.MANAGE_OWN_BOX):
        with pytest.raises(AccessDenied, match="belongs to root"):
            await checker.require_box(ADMIN, 0, "rootbox", action, "run a command in",
                                      as_owner=True)
    assert policy.asked == []  # refused before polkit is even asked


async def test_an_admin_may_still_see_stop_and_remove_roots_box() -> None:
    checker = Authorizer("system", 0, YesToAll())
    await checker.require_box(ADMIN, 0, "rootbox", authz.MANAGE_OWN_BOX, "stop")


async def test_root_and_other_owners_are_unaffected() -> None:
    checker = Authorizer("system", 0, YesToAll())
    await checker.require_box(ROOT, 0, "rootbox", authz.SPAWN_OWN_BOX, "run a command in",
                              as_owner=True)
    await checker.require_box(ADMIN, 2101, "alicebox", authz.SPAWN_OWN_BOX,
                              "run a command in", as_owner=True)
