"""Who sees which object: the pure rules of boxd.bus.visibility, the per-connection entitlement
cache, and the Dispatcher's Introspect/Properties/method answers over a stand-in bus (the
end-to-end proof with real users is tests/e2e/test_hostile_visibility.py)."""

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

from dbus_next import Message, MessageType, Variant
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

from boxd.authz import Caller
from boxd.bus import visibility
from boxd.bus.dispatch import Dispatcher

ALICE, BOB, ADMIN = 2101, 2102, 2103
BOX = "/io/github/boxd1/box/"


def test_may_see():
    assert visibility.may_see(BOB, None, False)          # public object
    assert visibility.may_see(BOB, BOB, False)           # own
    assert not visibility.may_see(BOB, ALICE, False)     # somebody else's
    assert visibility.may_see(BOB, ALICE, True)          # polkit: manage-any-box
    assert visibility.may_see(0, ALICE, False)           # root


def test_tree_nodes_and_children():
    visible = ["/io/github/boxd1", BOX + "bobs", BOX + "bobs2", "/io/github/boxd1/job/3"]
    assert visibility.children("/", visible) == ["io"]
    assert visibility.children("/io/github/boxd1", visible) == ["box", "job"]
    assert visibility.children("/io/github/boxd1/box", visible) == ["bobs", "bobs2"]
    assert visibility.children(BOX + "bobs", visible) == []
    assert visibility.is_node("/", [])
    assert visibility.is_node("/io/github", visible)
    assert visibility.is_node(BOX + "bobs", visible)
    assert not visibility.is_node("/io/github/boxd1/session", visible)
    assert not visibility.is_node(BOX + "bob", visible)  # a prefix of a name is no node


def test_introspection_xml():
    xml = ET.fromstring(visibility.introspection("/io/github/boxd1/box", None, [BOX + "b"]))
    assert [n.get("name") for n in xml.findall("node")] == ["b"]
    assert xml.findall("interface") == []


async def test_audience_caches_and_refreshes_polkits_answer():
    now = [0.0]
    asked: list[str] = []
    answers = {":1.5": True, ":1.6": False}

    async def check(caller: Caller) -> bool:
        asked.append(caller.sender)
        return answers[caller.sender]

    audience = visibility.Audience(ttl=60, clock=lambda: now[0])
    audience.check = check
    admin, bob = Caller(":1.5", ADMIN, 1, False), Caller(":1.6", BOB, 2, False)
    assert not audience.entitled(":1.5")  # unknown until asked
    assert await audience.sees_all(admin) and not await audience.sees_all(bob)
    assert await audience.sees_all(admin) and asked == [":1.5", ":1.6"]
    assert await audience.may_see(bob, BOB) and asked == [":1.5", ":1.6"]
    # Somebody else's object and a missing one cost the same question.
    fresh = Caller(":1.8", BOB, 4, False)
    answers[":1.8"] = False
    assert not await audience.may_see(fresh, None, exists=False) and asked[-1] == ":1.8"
    assert await audience.sees_all(Caller(":1.7", 0, 3, False))  # root: no question
    del answers[":1.8"]
    audience.forget(":1.8")
    callers = {":1.4": ALICE, ":1.5": ADMIN, ":1.6": BOB, ":1.7": 0}
    assert audience.recipients(ALICE, callers) == [":1.4", ":1.5", ":1.7"]
    assert audience.recipients(BOB, callers) == [":1.5", ":1.6", ":1.7"]
    assert audience.recipients(None, callers) == list(callers)
    now[0] = 61.0
    answers[":1.5"] = False  # no longer in boxd-admin
    assert not await audience.sees_all(admin)
    assert audience.recipients(ALICE, callers) == [":1.4", ":1.7"]
    audience.forget(":1.6")
    assert not audience.entitled(":1.6")


# -- the Dispatcher over a stand-in bus ---------------------------------------------------------
class FakeBus:
    """Just what Dispatcher uses: a message handler, exports, sends, and the bus's credentials."""

    def __init__(self, uids: dict[str, int]) -> None:
        self.uids = uids
        self.handler: Any = None
        self.sent: list[Message] = []

    def add_message_handler(self, handler: Any) -> None:
        self.handler = handler

    def export(self, path: str, interface: ServiceInterface) -> None:
        pass

    def unexport(self, path: str, interface: ServiceInterface) -> None:
        pass

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    async def call(self, msg: Message) -> Message:
        assert msg.member == "GetConnectionCredentials"
        msg.serial = 1
        return Message.new_method_return(msg, "a{sv}", [
            {"UnixUserID": Variant("u", self.uids[msg.body[0]]), "ProcessID": Variant("u", 1)}])


class Thing(ServiceInterface):
    def __init__(self, owner: int | None) -> None:
        super().__init__("io.github.boxd1.Box")
        self.owner_uid = owner

    async def authorize_read(self, caller: Caller) -> None:
        pass

    @method()
    async def Start(self):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: F821 (a D-Bus signature, as dbus-next reads it)
        return "secret"


class Bed:
    def __init__(self) -> None:
        self.bus = FakeBus({":1.1": ALICE, ":1.2": BOB, ":1.3": ADMIN, ":1.4": 0})
        self.dispatcher = Dispatcher(self.bus)  # type: ignore[arg-type]

        async def sees_all(caller: Caller) -> bool:
            return caller.uid == ADMIN

        self.dispatcher.audience.check = sees_all
        self.things = {"/io/github/boxd1": Thing(None), BOX + "alices": Thing(ALICE),
                       BOX + "bobs": Thing(BOB), "/io/github/boxd1/job/1": Thing(ALICE)}
        for path, thing in self.things.items():
            self.dispatcher.export(path, thing)

    async def call(self, sender: str, path: str, interface: str, member: str,
                   signature: str = "", body: list[Any] | None = None) -> Message:
        msg = Message(destination="io.github.boxd1", path=path, interface=interface,
                      member=member, signature=signature, body=body or [], serial=7)
        msg.sender = sender
        before = len(self.bus.sent)
        assert self.bus.handler(msg)
        for _ in range(100):
            if len(self.bus.sent) > before:
                break
            await asyncio.sleep(0)
        (reply,) = self.bus.sent[before:]
        return reply

    async def tree(self, sender: str, path: str = "/") -> list[str]:
        """Every path a recursive Introspect from `path` reaches, as busctl tree walks it."""
        reply = await self.call(sender, path, "org.freedesktop.DBus.Introspectable", "Introspect")
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        found = [path]
        for node in ET.fromstring(reply.body[0]).findall("node"):
            found += await self.tree(sender, path.rstrip("/") + "/" + node.get("name"))
        return found


def answer(reply: Message) -> tuple[Any, ...]:
    return (reply.message_type, reply.error_name, reply.signature, reply.body)


async def test_introspect_shows_each_caller_their_own_tree():
    bed = Bed()
    assert await bed.tree(":1.2") == ["/", "/io", "/io/github", "/io/github/boxd1",
                                      "/io/github/boxd1/box", BOX + "bobs"]
    alices = await bed.tree(":1.1")
    assert BOX + "alices" in alices and "/io/github/boxd1/job/1" in alices
    assert BOX + "bobs" not in alices
    for everyone in (":1.3", ":1.4"):  # an admin per polkit, and root
        assert set(bed.things) <= set(await bed.tree(everyone))


async def test_an_object_bob_may_not_see_answers_as_none_at_all():
    bed = Bed()
    probes = [("org.freedesktop.DBus.Introspectable", "Introspect", "", []),
              ("org.freedesktop.DBus.Properties", "GetAll", "s", ["io.github.boxd1.Box"]),
              ("org.freedesktop.DBus.Properties", "Get", "ss", ["io.github.boxd1.Box", "Name"]),
              ("org.freedesktop.DBus.Properties", "GetAll", "s", [""]),
              ("io.github.boxd1.Box", "Start", "", []),
              ("io.github.boxd1.Box", "Start", "s", ["x"]),
              ("io.github.boxd1.Box", "NoSuchMethod", "", []),
              ("io.github.boxd1.Job", "Cancel", "", [])]
    for path in (BOX + "alices", "/io/github/boxd1/job/1"):
        seen = [answer(await bed.call(":1.2", path, *p)) for p in probes]
        assert all(a[1] == "io.github.boxd1.Error.NotFound" for a in seen), seen
        bed.dispatcher.unexport(path, bed.things[path])
        assert [answer(await bed.call(":1.2", path, *p)) for p in probes] == seen
    # The owner still reads it.
    reply = await bed.call(":1.2", BOX + "bobs", "org.freedesktop.DBus.Properties", "Get", "ss",
                           ["io.github.boxd1.Box", "Name"])
    assert reply.body[0].value == "secret"


async def test_signals_are_unicast_to_those_who_may_see():
    bed = Bed()
    for sender in (":1.1", ":1.2", ":1.3", ":1.4"):  # each has called once
        await bed.call(sender, "/io/github/boxd1", "org.freedesktop.DBus.Introspectable",
                       "Introspect")
    bed.bus.sent.clear()
    bed.dispatcher.signal("/io/github/boxd1", "org.freedesktop.DBus.ObjectManager",
                          "InterfacesRemoved", "oas", [BOX + "alices", []], owner=ALICE)
    assert sorted(m.destination for m in bed.bus.sent) == [":1.1", ":1.3", ":1.4"]
    assert all(m.message_type == MessageType.SIGNAL for m in bed.bus.sent)
    bed.bus.sent.clear()
    bed.dispatcher.signal("/io/github/boxd1/job/1", "io.github.boxd1.Job", "Finished", "ssss",
                          ["done", "", "", ""], to=":1.1")
    assert [m.destination for m in bed.bus.sent] == [":1.1"]
    bed.dispatcher.forget_sender(":1.3")
    bed.bus.sent.clear()
    bed.dispatcher.signal(BOX + "alices", "org.freedesktop.DBus.Properties",
                          "PropertiesChanged", "sa{sv}as", ["x", {}, []], owner=ALICE)
    assert sorted(m.destination for m in bed.bus.sent) == [":1.1", ":1.4"]
