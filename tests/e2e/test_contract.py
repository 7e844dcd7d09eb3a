"""dbus/io.github.boxd1.xml is the API contract: the live daemon must match it exactly."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from bed import REPO

pytestmark = pytest.mark.e2e


def shape(xml: str) -> dict:
    """interface -> methods (arg types/directions), properties (type, access), signals."""
    result = {}
    for iface in ET.fromstring(xml).iter("interface"):
        name = iface.get("name")
        if not name.startswith("io.github.boxd1."):
            continue
        result[name] = {
            "methods": {m.get("name"): [(a.get("direction", "in"), a.get("type"))
                                        for a in m.iter("arg")] for m in iface.iter("method")},
            "properties": {p.get("name"): (p.get("type"), p.get("access"))
                           for p in iface.iter("property")},
            "signals": {s.get("name"): [a.get("type") for a in s.iter("arg")]
                        for s in iface.iter("signal")},
        }
    return result


def introspect(boxd, path: str) -> str:
    out = boxd.busctl("call", "io.github.boxd1", path, "org.freedesktop.DBus.Introspectable",
                      "Introspect", "--json=short").stdout
    import json

    return json.loads(out)["data"][0]


def test_live_api_matches_the_contract(boxd_bed, alice):
    contract = shape((REPO / "dbus" / "io.github.boxd1.xml").read_text())
    live = shape(introspect(boxd_bed, "/io/github/boxd1"))
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-contract", "", {}],
                             user=alice["name"])
    try:
        live.update(shape(introspect(boxd_bed, reply["body"][0])))
        spawned = boxd_bed.box("alice-contract", "Spawn", "ayaaya{uh}a{ss}a{sv}",
                               [{"$b": "/"}, [{"$b": "true"}], {"$i": [[1, {"$fd": 1}]]}, {},
                                {}], user=alice["name"])
        live.update(shape(introspect(boxd_bed, spawned["body"][0])))
        job = boxd_bed.manager("PullImage", "sa{sv}", ["127.0.0.1:1/nowhere:1", {}])
        live.update(shape(introspect(boxd_bed, job["body"][0])))
    finally:
        boxd_bed.box("alice-contract", "Remove", "b", [True], user=alice["name"])
    assert live == contract
    # The manager is an ObjectManager too.
    assert "org.freedesktop.DBus.ObjectManager" in introspect(boxd_bed, "/io/github/boxd1")


async def test_object_manager_and_property_signals(boxd_bed, alice):
    bus = await MessageBus(bus_address=boxd_bed.address).connect()
    seen: list[Message] = []
    bus.add_message_handler(lambda m: seen.append(m) if m.message_type == MessageType.SIGNAL
                            else None)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='io.github.boxd1'"]))
    # As any ObjectManager client does first; boxd sends box signals to callers it knows.
    await bus.call(Message(destination="io.github.boxd1", path="/io/github/boxd1",
                           interface="org.freedesktop.DBus.ObjectManager",
                           member="GetManagedObjects"))
    loop = asyncio.get_running_loop()
    user = alice["name"]
    try:
        reply = await loop.run_in_executor(None, lambda: boxd_bed.manager(
            "CreateBox", "ssa{sv}", ["alice-sig", "", {}], user=user))
        path = reply["body"][0]
        await loop.run_in_executor(None, lambda: boxd_bed.box("alice-sig", "Start", user=user))
        await loop.run_in_executor(None, lambda: boxd_bed.box("alice-sig", "Remove", "b", [True],
                                                              user=user))
        await asyncio.sleep(0.5)
    finally:
        bus.disconnect()
    added = [m for m in seen if m.member == "InterfacesAdded" and m.path == "/io/github/boxd1"]
    assert [m.body[0] for m in added] == [path]
    assert added[0].body[1]["io.github.boxd1.Box"]["Name"].value == "alice-sig"
    states = [m.body[1]["State"].value for m in seen
              if m.member == "PropertiesChanged" and m.path == path and "State" in m.body[1]]
    assert states[:2] == ["starting", "running"], states
    removed = [m for m in seen if m.member == "InterfacesRemoved" and m.path == "/io/github/boxd1"]
    assert [m.body for m in removed] == [[path, ["io.github.boxd1.Box"]]]
