"""Who may see which of boxd's objects on the bus.

A box, job or session belongs to one uid. Its owner sees it, and so do root and whoever polkit
lets manage any box ("sees all"); to everyone else it does not exist: Introspect leaves it out of
the tree, Properties and methods on its path answer exactly as for a path with no object, and its
signals are never sent their way. An object with no owner (the Manager) is public.

The pure rules are functions here; `Audience` remembers, per bus connection that has called boxd,
whether it sees all (polkit's answer, asked once per connection and refreshed on later calls),
so that signals, which are sent synchronously, know their recipients.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping

from dbus_next import introspection as intr

from boxd.authz import Caller

# How long polkit's "sees all" answer for a connection is trusted before the next call asks again.
ENTITLEMENT_TTL = 60.0
_MAX_REMEMBERED = 4096


def may_see(viewer_uid: int, owner: int | None, sees_all: bool) -> bool:
    """Does a caller with `viewer_uid` (and polkit's `sees_all` for it) see an object of
    `owner` (None: a public object)?"""
    return owner is None or viewer_uid in (0, owner) or sees_all


def is_node(path: str, visible: Iterable[str]) -> bool:
    """A path is in the caller's tree if an object they see is at it or below it."""
    if path == "/":
        return True
    below = path + "/"
    return any(p == path or p.startswith(below) for p in visible)


def children(path: str, visible: Iterable[str]) -> list[str]:
    """The names of the nodes right below `path` in the tree of `visible` paths, sorted."""
    prefix = "/" if path == "/" else path + "/"
    names = {p[len(prefix):].split("/", 1)[0] for p in visible
             if p.startswith(prefix) and len(p) > len(prefix)}
    return sorted(names)


def introspection(path: str, interfaces: list[intr.Interface] | None,
                  visible: Iterable[str]) -> str:
    """Introspection XML for `path`: its interfaces (None: no object here, only a node on the
    way to one) and the child nodes the caller may see."""
    node = intr.Node.default(path) if interfaces is not None else intr.Node(path)
    node.interfaces.extend(interfaces or [])
    node.nodes = [intr.Node(name) for name in children(path, visible)]
    return node.tostring()


class Audience:
    """Connections that have called boxd, with polkit's "sees all" answer for each."""

    def __init__(self, ttl: float = ENTITLEMENT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # Set by the service: the policy question (boxd.authz.Authorizer.sees_all).
        self.check: Callable[[Caller], Awaitable[bool]] | None = None
        self._ttl = ttl
        self._clock = clock
        self._entitled: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    async def sees_all(self, caller: Caller) -> bool:
        if caller.uid == 0:
            return True
        cached = self._entitled.get(caller.sender)
        if cached is not None and self._clock() - cached[1] < self._ttl:
            return cached[0]
        answer = bool(self.check is not None and await self.check(caller))
        self._entitled[caller.sender] = (answer, self._clock())
        self._entitled.move_to_end(caller.sender)
        if len(self._entitled) > _MAX_REMEMBERED:
            self._entitled.popitem(last=False)
        return answer

    async def may_see(self, caller: Caller, owner: int | None, exists: bool = True) -> bool:
        """may_see(), asking polkit only when the object is not the caller's own, and as much
        for a missing object as for somebody else's: how long the answer takes tells nothing."""
        if exists and may_see(caller.uid, owner, False):
            return True
        return await self.sees_all(caller) and exists

    def entitled(self, sender: str) -> bool:
        """The last answer for this connection (no polkit round trip: signals cannot wait)."""
        cached = self._entitled.get(sender)
        return cached is not None and cached[0]

    def forget(self, sender: str) -> None:
        self._entitled.pop(sender, None)

    def recipients(self, owner: int | None, callers: Mapping[str, int]) -> list[str]:
        """Which of the known `callers` (sender -> uid) may get a signal about an object of
        `owner`."""
        return [sender for sender, uid in callers.items()
                if may_see(uid, owner, self.entitled(sender))]
