"""Who may do what. The caller's identity always comes from the bus (see boxd.bus.dispatch), never
from arguments. Root may do anything; in system mode everyone else is asked about through polkit
(actions io.github.boxd1.*, with details rules can use); session mode serves only its own user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from boxd import log
from boxd.errors import AccessDenied

_log = log.get("boxd.authz")

CREATE_BOX = "io.github.boxd1.create-box"
MANAGE_OWN_BOX = "io.github.boxd1.manage-own-box"
SPAWN_OWN_BOX = "io.github.boxd1.spawn-own-box"
SPAWN_AS_ROOT = "io.github.boxd1.spawn-as-root"
MANAGE_ANY_BOX = "io.github.boxd1.manage-any-box"
MANAGE_IMAGES = "io.github.boxd1.manage-images"


@dataclass(frozen=True)
class Caller:
    sender: str             # unique bus name
    uid: int
    pid: int
    allow_interactive: bool  # the call carried ALLOW_INTERACTIVE_AUTHORIZATION


class PolicyChecker(Protocol):
    async def check(self, sender: str, action: str, details: dict[str, str],
                    interactive: bool) -> bool: ...


class Authorizer:
    def __init__(self, mode: str, daemon_uid: int, policy: PolicyChecker | None) -> None:
        self.mode = mode
        self.daemon_uid = daemon_uid
        self._policy = policy

    async def require(self, caller: Caller, action: str, details: dict[str, str],
                      what: str) -> None:
        """Raise AccessDenied unless the caller may do `action`; `what` completes
        'you are not allowed to ...'."""
        if self.mode == "session":
            if caller.uid != self.daemon_uid:
                raise AccessDenied("this boxd serves only the user who runs it")
            return
        if caller.uid == 0:
            return
        if self._policy is None:
            raise AccessDenied(f"you are not allowed to {what}: boxd has no polkit to ask")
        allowed = await self._policy.check(caller.sender, action, details,
                                           caller.allow_interactive)
        _log.info("authorization", caller_uid=caller.uid, action=action, allowed=allowed,
                  box=details.get("box"))
        if not allowed:
            raise AccessDenied(f"you are not allowed to {what}")

    async def require_box(self, caller: Caller, owner: int, box: str, own_action: str,
                          what: str, extra: dict[str, str] | None = None,
                          as_owner: bool = False) -> None:
        """Own boxes need `own_action`; anyone else's box needs manage-any-box as well.

        `as_owner`: the call acts with the owner's rights in the box (runs commands, writes in
        the owner's home, changes what the entry point runs as root). In root's boxes uid 0 is
        the host's root, so that is root's alone, whatever polkit grants (boxd-admin too)."""
        if as_owner and owner == 0 and caller.uid != 0 and self.mode == "system":
            _log.warning("root_box_refused", caller_uid=caller.uid, box=box, what=what)
            raise AccessDenied(f"you are not allowed to {what} box {box!r}: it belongs to "
                               "root, and acting as its owner is root on the host")
        details = {"box": box, "owner": str(owner), **(extra or {})}
        if caller.uid != owner and self.mode == "system" and caller.uid != 0:
            await self.require(caller, MANAGE_ANY_BOX, details,
                               f"{what} box {box!r}, which belongs to another user")
        await self.require(caller, own_action, details, f"{what} box {box!r}")

    async def sees_all(self, caller: Caller) -> bool:
        """May this caller see every user's boxes? Asked without interaction."""
        if self.mode == "session" or caller.uid == 0:
            return True
        if self._policy is None:
            return False
        try:
            return await self._policy.check(caller.sender, MANAGE_ANY_BOX, {}, False)
        except AccessDenied:
            return False  # polkit is down: a listing still shows the caller's own boxes
