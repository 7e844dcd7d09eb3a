"""Asks polkit (org.freedesktop.PolicyKit1 on the system bus) whether a bus caller may do an
action. Asynchronous: the daemon keeps serving others while polkit (or a password prompt) answers.
A polkit that is down or errs means "no", said as such."""

from __future__ import annotations

import asyncio

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from boxd import log
from boxd.errors import AccessDenied

_log = log.get("boxd.polkit")
ALLOW_USER_INTERACTION = 1
# A person may take a while to type a password; a missing agent answers at once.
INTERACTIVE_TIMEOUT = 300.0
TIMEOUT = 25.0


class Polkit:
    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def check(self, sender: str, action: str, details: dict[str, str],
                    interactive: bool) -> bool:
        message = Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority", member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", sender)}], action, details,
                   ALLOW_USER_INTERACTION if interactive else 0, ""])
        try:
            async with asyncio.timeout(INTERACTIVE_TIMEOUT if interactive else TIMEOUT):
                reply = await self._bus.call(message)
        except TimeoutError:
            _log.warning("polkit_timeout", action=action)
            return False
        if reply is None or reply.message_type == MessageType.ERROR:
            error = getattr(reply, "error_name", None)
            _log.warning("polkit_error", action=action, error=error,
                         message=(reply.body or [""])[0] if reply else "")
            raise AccessDenied("boxd cannot ask polkit whether you may do this (polkit is not "
                               "running or failed), so it is denied; ask an administrator to "
                               "start polkit")
        authorized, _challenge, _details = reply.body[0]
        return bool(authorized)
