"""Who may do what. System mode: the owner of a box, or root. Session mode: the session's user.

Caller identity always comes from the bus (see boxd.bus.dispatch), never from arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from boxd.errors import AccessDenied


@dataclass(frozen=True)
class Authorizer:
    mode: str
    daemon_uid: int

    def can_see(self, caller_uid: int, owner_uid: int) -> bool:
        if self.mode == "session":
            return caller_uid == self.daemon_uid
        return caller_uid in (0, owner_uid)

    def check_box(self, caller_uid: int, owner_uid: int, box: str) -> None:
        if not self.can_see(caller_uid, owner_uid):
            raise AccessDenied(f"box {box!r} belongs to another user")

    def check_create(self, caller_uid: int) -> None:
        if self.mode == "session" and caller_uid != self.daemon_uid:
            raise AccessDenied("this boxd serves only the user who runs it")
