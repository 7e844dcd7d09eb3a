"""Random D-Bus values of random types thrown at every boxd method of the live daemon: it keeps
answering, every error is a named io.github.boxd1 (or standard) error, and no traceback leaks."""

from __future__ import annotations

import asyncio

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

TARGETS = [
    ("/io/github/boxd1", "io.github.boxd1.Manager", m)
    for m in ("CreateBox", "GetBox", "ListBoxes")
] + [
    (path, "io.github.boxd1.Box", m)
    for path in ("/io/github/boxd1/box/nosuch", "/io/github/boxd1/box/fuzz_2dbox")
    for m in ("Start", "Stop", "Remove", "Configure", "Spawn", "GetSettings", "ExportApp",
              "ExportBin", "GenerateEntry", "Unexport", "ListExports")
] + [
    ("/io/github/boxd1/session/999", "io.github.boxd1.Session", m)
    for m in ("Resize", "Signal", "Wait")
] + [
    ("/io/github/boxd1", "io.github.boxd1.Manager", m) for m in ("PullImage", "RemoveImage")
] + [
    ("/io/github/boxd1/job/999", "io.github.boxd1.Job", "Cancel"),
] + [
    ("/io/github/boxd1/box/fuzz_2dbox", "org.freedesktop.DBus.Properties", m)
    for m in ("Get", "GetAll", "Set")
]

# (signature, strategy) pairs; containers nest the simple ones.
# D-Bus strings are valid UTF-8 without NUL; anything else the bus itself rejects.
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=300)
SIMPLE = [
    ("s", TEXT), ("b", st.booleans()), ("i", st.integers(-2**31, 2**31 - 1)),
    ("u", st.integers(0, 2**32 - 1)), ("t", st.integers(0, 2**64 - 1)),
    ("ay", st.binary(max_size=300)), ("as", st.lists(TEXT, max_size=5)),
    ("o", st.sampled_from(["/", "/io/github/boxd1", "/a/b_c"])),
]
VARIANT = st.sampled_from(SIMPLE).flatmap(lambda p: p[1].map(lambda v, s=p[0]: Variant(s, v)))
VALUES = [
    *SIMPLE,
    ("a{sv}", st.dictionaries(st.sampled_from(["home", "volumes", "env", "tty", "shell", "root",
                                               "hostname", "x"]), VARIANT, max_size=4)),
    ("a{ss}", st.dictionaries(TEXT, TEXT, max_size=4)),
    ("aay", st.lists(st.binary(max_size=50), max_size=4)),
    ("v", VARIANT),
]
ARGS = st.lists(st.sampled_from(VALUES), max_size=5).flatmap(
    lambda pairs: st.tuples(st.just("".join(p[0] for p in pairs)),
                            st.tuples(*[p[1] for p in pairs]) if pairs else st.just(())))


@pytest.fixture(scope="module")
def fuzz_box(boxd_bed, bob):
    """A real box of bob's, stopped, as a target whose owner is the fuzzing user."""
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["fuzz-box", "", {}], user=bob["name"])
    assert "error" not in reply, reply
    yield
    boxd_bed.box("fuzz-box", "Remove", "b", [True])


def test_fuzz_every_method(boxd_bed, fuzz_box):
    loop = asyncio.new_event_loop()

    async def connect() -> MessageBus:  # dbus-next binds to the loop running at construction
        return await MessageBus(bus_address=boxd_bed.address).connect()

    bus = loop.run_until_complete(connect())
    errors_seen: set[str] = set()

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(target=st.sampled_from(TARGETS), args=ARGS)
    def one_call(target, args):
        path, interface, member = target
        signature, body = args
        if member in ("Start", "Remove", "Configure", "Spawn", "ExportApp", "ExportBin",
                      "GenerateEntry", "Unexport") and path.endswith("fuzz_2dbox"):
            signature, body = "", ()  # root may do these for real: keep them harmless
        if member in ("PullImage", "RemoveImage") and signature in ("sa{sv}", "sb"):
            body = ("127.0.0.1:1/fuzz:1", *body[1:])  # nowhere to pull from, nothing to remove
        reply = loop.run_until_complete(asyncio.wait_for(bus.call(Message(
            destination="io.github.boxd1", path=path, interface=interface, member=member,
            signature=signature, body=list(body))), 30))
        if reply.message_type == MessageType.ERROR:
            errors_seen.add(reply.error_name)
            text = reply.body[0] if reply.body else ""
            assert "Traceback" not in str(text)
            assert reply.error_name.startswith(("io.github.boxd1.Error.",
                                                "org.freedesktop.DBus.Error.")), reply.error_name
            assert reply.error_name != "io.github.boxd1.Error.Internal", text

    try:
        one_call()
    finally:
        bus.disconnect()
        loop.close()
    assert boxd_bed.daemon.alive()
    assert "error" not in boxd_bed.manager("ListBoxes")
    print(f"errors seen: {sorted(errors_seen)}")
    assert "io.github.boxd1.Error.InvalidArgument" in errors_seen
