"""boxd's side of the wire: every hook into dbus-next's private parts lives here.

dbus-next is pinned (0.2.3) and tests/unit/test_wire.py pins what this module relies on.

Every local user can send the daemon messages as large as the bus allows (32 MiB on a stock
system bus) holding as many values as fit. dbus-next would buffer and decode each whole before
boxd sees it, on the event loop every other caller waits on. BoundedUnmarshaller reads the
header of every message but
- drains a body over MAX_BODY bytes unread, a slice per turn of the loop, and
- stops decoding a body at its MAX_ELEMENTS-th value (the characters of variant signatures count),
and hands on a RejectedMessage instead: its header is the real one, its body is empty, and it
carries the fds that came with it, so the dispatcher can answer Error.TooLarge and close them.

dbus-next also keeps every signature it ever parsed (SignatureTree._cache); a user who sends
endless distinct signatures would grow it forever, so it is emptied past SIGNATURE_CACHE_MAX.
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next._private.constants import BIG_ENDIAN, LITTLE_ENDIAN, PROTOCOL_VERSION, HeaderField
from dbus_next._private.unmarshaller import (
    MAX_UNIX_FDS,
    MarshallerStreamEndError,
    Unmarshaller,
)
from dbus_next.aio import MessageBus
from dbus_next.aio.message_bus import (
    _future_set_exception,
    _future_set_result,
    _MessageWriter,
)
from dbus_next.errors import InvalidMessageError
from dbus_next.service import ServiceInterface
from dbus_next.signature import SignatureTree, Variant

from boxd import log

MAX_BODY = 1 << 20          # bytes of a body boxd decodes; larger ones are drained unread
MAX_ELEMENTS = 16384        # values (and variant signature characters) in one message
MAX_HEADER = 1 << 16        # a real call's header fields take well under 1 KiB
SIGNATURE_CACHE_MAX = 512
_DRAIN_CHUNK = 1 << 18      # bytes per read while draining
_DRAIN_TURN = 1 << 20       # bytes drained per turn of the event loop: others get theirs
TOO_LARGE = "io.github.boxd1.Error.TooLarge"

_log = log.get("boxd.bus")


class RejectedMessage(Message):
    """A message whose body boxd did not decode (body empty); `reason` says why, in a sentence
    for the sender."""

    reason: str = ""


class _TooManyValues(Exception):
    pass


def close_fds(msg: Message) -> None:
    """Close every fd that came with a message (each exactly once)."""
    fds, msg.unix_fds = list(msg.unix_fds), []
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def bound_signature_cache() -> None:
    if len(SignatureTree._cache) > SIGNATURE_CACHE_MAX:
        SignatureTree._cache.clear()


class BoundedUnmarshaller(Unmarshaller):
    """dbus-next's Unmarshaller with bounds (see the module's doc). One instance reads one
    message; dbus-next calls unmarshall() again after each partial read."""

    def __init__(self, stream: Any, sock: socket.socket | None = None) -> None:
        super().__init__(stream, sock)
        self._elements = 0
        self._drain = 0                       # bytes still to be read and dropped
        self._pending: RejectedMessage | None = None  # what the drained message becomes
        self._scratch: bytearray | None = None

    # -- counting values -----------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._elements += n
        if self._elements > MAX_ELEMENTS:
            raise _TooManyValues

    def read_argument(self, type_: Any) -> Any:
        self._count(1)
        return super().read_argument(type_)

    def read_variant(self, _: Any = None) -> Variant:
        signature = self.read_signature()
        self._count(len(signature))
        tree = SignatureTree._get(signature)
        return Variant(tree, self.read_argument(tree.types[0]))

    # -- reading -------------------------------------------------------------------------------
    def unmarshall(self) -> Message | None:
        try:
            self._unmarshall()
            return self.message
        except MarshallerStreamEndError:
            return None

    def _unmarshall(self) -> None:
        if self._drain:
            self._drain_more()  # until the message is read whole
            self._hand_on(self._pending)
            return
        bound_signature_cache()
        self.offset = 0
        self.read(16, prefetch=True)
        self.endian = self.read_byte()
        if self.endian not in (LITTLE_ENDIAN, BIG_ENDIAN):
            raise InvalidMessageError("Expecting endianness as the first byte")
        message_type = MessageType(self.read_byte())
        flags = MessageFlag(self.read_byte())
        if self.read_byte() != PROTOCOL_VERSION:
            raise InvalidMessageError("got an unknown protocol version")
        body_len = self.read_uint32()
        serial = self.read_uint32()
        header_len = self.read_uint32()
        header_end = 16 + header_len + self._padding(header_len, 8)
        if header_len > MAX_HEADER:
            # Who sent it cannot even be read cheaply: drop it whole, unanswered.
            _log.warning("message_dropped", reason="header too large", header_bytes=header_len)
            self._drain_then(header_end - 16 + body_len, None)
            return
        self.read(header_end - 16, prefetch=True)
        self.offset -= 4  # the header array's length is read again with the array
        try:
            fields = self._header_fields()
        except _TooManyValues:
            _log.warning("message_dropped", reason="too many header fields")
            self._drain_then(body_len, None)
            return
        self.offset = header_end
        self._elements = 0
        signature = fields.pop("signature", "")
        common = {"message_type": message_type, "flags": flags, "serial": serial, **fields}
        if body_len > MAX_BODY:
            self._drain_then(body_len, self._rejected(
                common, f"the message's body is {body_len} bytes; boxd reads at most "
                        f"{MAX_BODY} bytes of one message"))
            return
        self.read(body_len, prefetch=True)
        try:
            tree = SignatureTree._get(signature)
            body = [self.read_argument(t) for t in tree.types] if body_len else []
            message: Message | None = Message(unix_fds=self.unix_fds, signature=tree,
                                              body=body, **common)
        except _TooManyValues:
            message = self._rejected(
                common, f"the message holds more than {MAX_ELEMENTS} values; boxd reads at "
                        "most that many from one message")
        except Exception as exc:  # the bus validates bodies; never let one end the connection
            message = self._rejected(common, f"boxd could not read the message ({exc})")
        self._hand_on(message)

    def _hand_on(self, message: Message | None) -> None:
        """The message is read whole: hand it on, or drop it (closing its fds) and start
        afresh with the next one."""
        if message is not None:
            self.message = message
            return
        for fd in self.unix_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.buf = bytearray()
        self.offset = 0
        self.unix_fds = []
        self._elements = 0
        self._pending = None
        raise MarshallerStreamEndError  # the next message on the loop's next turn

    def _header_fields(self) -> dict[str, Any]:
        names = {HeaderField.PATH: "path", HeaderField.INTERFACE: "interface",
                 HeaderField.MEMBER: "member", HeaderField.ERROR_NAME: "error_name",
                 HeaderField.REPLY_SERIAL: "reply_serial",
                 HeaderField.DESTINATION: "destination", HeaderField.SENDER: "sender",
                 HeaderField.SIGNATURE: "signature"}
        fields = {}
        for code, variant in self.read_argument(SignatureTree._get("a(yv)").types[0]):
            try:
                name = names.get(HeaderField(code))
            except ValueError:
                continue  # unknown fields are to be ignored
            if name is not None:
                fields[name] = variant.value
        return fields

    def _rejected(self, common: dict[str, Any], reason: str) -> RejectedMessage | None:
        """What a message boxd will not decode becomes: a call or signal keeps its header and
        loses its body; a reply becomes an error, so that whoever awaits it hears why."""
        fields = dict(common)
        try:
            if fields["message_type"] in (MessageType.METHOD_RETURN, MessageType.ERROR):
                fields.update(message_type=MessageType.ERROR, error_name=TOO_LARGE)
                msg = RejectedMessage(unix_fds=self.unix_fds, signature="s", body=[reason],
                                      **fields)
            else:
                msg = RejectedMessage(unix_fds=self.unix_fds, **fields)
        except Exception:
            return None  # a header dbus-next refuses: dropped, its fds closed
        msg.reason = reason
        _log.info("message_rejected", sender=fields.get("sender"), member=fields.get("member"),
                  reason=reason)
        return msg

    def _drain_then(self, count: int, pending: RejectedMessage | None) -> None:
        """Read and drop `count` more bytes, then hand on `pending`."""
        self._drain = count
        self._pending = pending
        self._drain_more()
        self._hand_on(pending)

    def _drain_more(self) -> None:
        """Read and drop the rest of the message, at most _DRAIN_TURN bytes per turn."""
        if self._scratch is None:
            self._scratch = bytearray(_DRAIN_CHUNK)
        view = memoryview(self._scratch)
        budget = _DRAIN_TURN
        while self._drain:
            size = min(self._drain, _DRAIN_CHUNK, budget)
            if size == 0:
                raise MarshallerStreamEndError  # the rest on the loop's next turn
            got = self._read_dropped(view[:size])
            self._drain -= got
            budget -= got

    def _read_dropped(self, into: memoryview) -> int:
        if self.sock is None:
            data = self.stream.read(len(into))
            if data is None:
                raise MarshallerStreamEndError
            if data == b"":
                raise EOFError
            return len(data)
        fds = array.array("i")
        try:
            got, ancdata, _flags, _addr = self.sock.recvmsg_into(
                [into], socket.CMSG_LEN(MAX_UNIX_FDS * fds.itemsize))
        except BlockingIOError:
            raise MarshallerStreamEndError from None
        for level, type_, data in ancdata:
            if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
                self.unix_fds.extend(fds)
        if got == 0:
            raise EOFError
        return got


def methods_of(interface: ServiceInterface) -> list[Any]:
    return ServiceInterface._get_methods(interface)


def properties_of(interface: ServiceInterface) -> list[Any]:
    return ServiceInterface._get_properties(interface)


def args_of(msg: Message) -> list[Any]:
    """A call's arguments as a method takes them (fd indexes made fds)."""
    return ServiceInterface._msg_body_to_args(msg)


def reply_body(result: Any, method: Any) -> tuple[list[Any], list[int]]:
    """(body, fds) of a method's result."""
    return ServiceInterface._fn_result_to_body(result, method.out_signature_tree)


class _PatientWriter(_MessageWriter):
    """dbus-next's writer, but a full socket (EAGAIN) means "wait until it is writable", not
    "the connection is lost": a flood of replies must not cut boxd off the bus."""

    def write_callback(self) -> None:
        try:
            while True:
                if self.buf is None:
                    if self.messages.qsize() == 0:
                        self.loop.remove_writer(self.fd)
                        return
                    buf, unix_fds, fut = self.messages.get_nowait()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                if self.unix_fds and self.negotiate_unix_fd:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", self.unix_fds))]
                    self.offset += self.sock.sendmsg([self.buf[self.offset:]], ancdata)
                    self.unix_fds = None
                else:
                    self.offset += self.sock.send(self.buf[self.offset:])
                if self.offset < len(self.buf):
                    return  # the rest when the socket is writable again
                self.buf = None
                _future_set_result(self.fut, None)
        except BlockingIOError:
            return  # still registered as the socket's writer: called again once it drains
        except Exception as exc:
            _future_set_exception(self.fut, exc)
            self.bus._finalize(exc)


class BoxdBus(MessageBus):
    """dbus-next's bus with BoundedUnmarshaller and a writer that waits out a full socket.
    dbus-next also announces every exported object to the whole bus (and from the object's
    own path, not the ObjectManager's); boxd sends its own ObjectManager signals, and only to
    those who may see the object, so dbus-next's are switched off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writer = _PatientWriter(self)

    def _create_unmarshaller(self) -> BoundedUnmarshaller:
        return BoundedUnmarshaller(self._stream, self._sock if self._negotiate_unix_fd else None)

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        pass

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        pass
