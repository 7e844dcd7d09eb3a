"""boxd/bus/wire.py against the pinned dbus-next (0.2.3): the bounded unmarshaller over a real
socket pair, fds included, and the private parts of dbus-next it relies on."""

from __future__ import annotations

import array
import os
import select
import socket
import threading

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next._private.unmarshaller import Unmarshaller
from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface
from dbus_next.signature import SignatureTree

from boxd.bus import wire


@pytest.fixture
def pair():
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.setblocking(False)
    yield reader, writer
    reader.close()
    writer.close()


def send(writer: socket.socket, msg: Message, fds: list[int] = (),
         then: Message | None = None) -> threading.Thread:
    """Write a marshalled message (fds with its first byte), and `then` another, from a
    thread: large ones do not fit in the socket's buffer."""
    data = msg._marshall(negotiate_unix_fd=True)

    def write() -> None:
        view = memoryview(data)
        if fds:
            sent = writer.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds))])
            view = view[sent:]
        writer.sendall(view)
        if then is not None:
            writer.sendall(then._marshall(negotiate_unix_fd=True))

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def receive(reader: socket.socket, count: int = 1) -> list[Message]:
    got = []
    unmarshaller = wire.BoundedUnmarshaller(None, reader)
    while len(got) < count:
        msg = unmarshaller.unmarshall()
        if msg is None:
            assert select.select([reader], [], [], 10)[0], "nothing more arrived"
            continue
        got.append(msg)
        unmarshaller = wire.BoundedUnmarshaller(None, reader)  # as dbus-next does
    return got


def call(signature: str, body: list, fds: int = 0, **fields) -> Message:
    return Message(destination="io.github.boxd1", path="/io/github/boxd1",
                   interface="io.github.boxd1.Manager", member="ListBoxes", signature=signature,
                   body=body, serial=7, sender=":1.9", unix_fds=list(range(fds)), **fields)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_normal_message_is_read_whole_with_its_fds(pair):
    reader, writer = pair
    r, w = os.pipe()
    send(writer, call("sh", ["hello", 0], fds=1), [r]).join()
    (msg,) = receive(reader)
    assert not isinstance(msg, wire.RejectedMessage)
    assert (msg.member, msg.signature, msg.body, msg.serial) == ("ListBoxes", "sh",
                                                                 ["hello", 0], 7)
    assert len(msg.unix_fds) == 1 and os.fstat(msg.unix_fds[0]).st_ino == os.fstat(r).st_ino
    for fd in (r, w, *msg.unix_fds):
        os.close(fd)


def test_a_body_over_the_limit_is_drained_unread_and_the_next_message_follows(pair):
    reader, writer = pair
    r, w = os.pipe()
    big = send(writer, call("ay", [b"x" * (wire.MAX_BODY + 1)], fds=1), [r],
               then=call("s", ["next"]))
    first, second = receive(reader, 2)
    big.join()
    assert isinstance(first, wire.RejectedMessage)
    assert first.message_type == MessageType.METHOD_CALL and first.body == []
    assert (first.member, first.serial, first.path) == ("ListBoxes", 7, "/io/github/boxd1")
    assert "at most 1048576 bytes" in first.reason
    assert len(first.unix_fds) == 1  # handed on, for the dispatcher to close
    assert second.body == ["next"]
    before = open_fds()
    wire.close_fds(first)
    assert open_fds() == before - 1 and first.unix_fds == []
    for fd in (r, w):
        os.close(fd)


def test_a_body_at_the_limit_is_read(pair):
    reader, writer = pair
    payload = b"x" * (wire.MAX_BODY - 4)  # the array's length takes 4 bytes
    thread = send(writer, call("ay", [payload]))
    (msg,) = receive(reader)
    thread.join()
    assert not isinstance(msg, wire.RejectedMessage) and msg.body == [payload]


def test_values_are_counted_and_too_many_are_refused(pair):
    reader, writer = pair
    ok = send(writer, call("ai", [list(range(wire.MAX_ELEMENTS - 1))]))  # +1: the array
    (msg,) = receive(reader)
    ok.join()
    assert not isinstance(msg, wire.RejectedMessage)
    over = send(writer, call("ai", [list(range(wire.MAX_ELEMENTS))]))
    (msg,) = receive(reader)
    over.join()
    assert isinstance(msg, wire.RejectedMessage)
    assert "more than 16384 values" in msg.reason


def test_variant_signatures_count_as_values(pair):
    reader, writer = pair
    deep = "a" * 30 + "i"
    value: list = [1]
    for _ in range(29):
        value = [value]
    variants = [Variant(deep, value)] * 600  # 600 * (31 signature chars + 31 values)
    thread = send(writer, call("av", [variants]))
    (msg,) = receive(reader)
    thread.join()
    assert isinstance(msg, wire.RejectedMessage)


def test_a_rejected_reply_becomes_an_error_for_whoever_waits(pair):
    reader, writer = pair
    reply = Message(message_type=MessageType.METHOD_RETURN, reply_serial=3, serial=8,
                    sender=":1.1", signature="ai", body=[list(range(wire.MAX_ELEMENTS + 5))])
    thread = send(writer, reply)
    (msg,) = receive(reader)
    thread.join()
    assert msg.message_type == MessageType.ERROR
    assert (msg.error_name, msg.reply_serial) == (wire.TOO_LARGE, 3)
    assert "values" in msg.body[0]


def test_the_signature_cache_stays_bounded(pair):
    reader, writer = pair
    for n in range(wire.SIGNATURE_CACHE_MAX + 100):
        signature = "(" + "i" * (n % 200 + 1) + "y" * (n // 200 + 1) + ")"
        thread = send(writer, call("v", [Variant(signature, [0] * (n % 200 + 1)
                                                 + [0] * (n // 200 + 1))]))
        receive(reader)
        thread.join()
        assert len(SignatureTree._cache) <= wire.SIGNATURE_CACHE_MAX + 3


async def test_the_private_parts_of_dbus_next_boxd_relies_on(tmp_path):
    """What wire.py overrides or calls: if dbus-next changes these, these tests say so."""
    assert MessageBus._create_unmarshaller and MessageBus._message_reader
    assert MessageBus._emit_interface_added and MessageBus._emit_interface_removed
    for name in ("read_argument", "read_variant", "read_signature", "read", "unmarshall",
                 "_padding"):
        assert hasattr(Unmarshaller, name), name
    assert Unmarshaller(None, None).readers["v"].__name__ == "read_variant"
    assert isinstance(SignatureTree._cache, dict)
    for name in ("_get_methods", "_get_properties", "_msg_body_to_args", "_fn_result_to_body"):
        assert hasattr(ServiceInterface, name), name
    with socket.socket(socket.AF_UNIX) as server:  # the bus's constructor connects
        server.bind(str(tmp_path / "bus"))
        server.listen()
        bus = wire.BoxdBus(bus_address=f"unix:path={tmp_path / 'bus'}", negotiate_unix_fd=True)
        assert isinstance(bus._create_unmarshaller(), wire.BoundedUnmarshaller)
        assert bus._create_unmarshaller().sock is bus._sock
        bus._sock.close()
