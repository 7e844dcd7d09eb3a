"""run_captured against a stand-in podman: output and time are bounded, with named errors."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from boxd import errors
from boxd.capture import run_captured
from boxd.podman import ExecStream


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakePodman:
    """Streams what `feed` writes into the exec's reader; the exec is seen ended already (so no
    process is pinned or killed here: tests/unit/test_process.py covers that)."""

    def __init__(self, feed: Any) -> None:
        self._feed = feed
        self.writer = _Writer()
        self.inspected = 0

    async def exec_create(self, box: str, config: dict[str, Any]) -> str:
        return "exec-1"

    async def exec_start(self, exec_id: str, tty: bool) -> ExecStream:
        reader = asyncio.StreamReader()
        asyncio.get_running_loop().create_task(self._feed(reader))
        return ExecStream(b"", reader, self.writer)  # type: ignore[arg-type]

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        self.inspected += 1
        return {"Running": False, "ExitCode": 3, "Pid": 999_999}

    async def wait_exec_ended(self, exec_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return {"Running": False, "ExitCode": 3}


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(data)) + data


async def test_output_is_returned_split_by_stream() -> None:
    async def feed(reader: asyncio.StreamReader) -> None:
        reader.feed_data(frame(1, b"out") + frame(2, b"err") + frame(1, b"put"))
        reader.feed_eof()

    podman = FakePodman(feed)
    assert await run_captured(podman, "b", ["x"], "1:1", b"in") == (3, b"output", b"err")  # type: ignore[arg-type]
    assert podman.writer.data == b"in" and podman.writer.closed


async def test_endless_output_stops_at_the_limit() -> None:
    async def feed(reader: asyncio.StreamReader) -> None:
        chunk = frame(1, b"y" * 65536)
        for _ in range(10_000):
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    podman = FakePodman(feed)
    with pytest.raises(errors.LimitReached, match="printed more than 1048576 bytes"):
        await run_captured(podman, "b", ["x"], "1:1", max_output=1 << 20)  # type: ignore[arg-type]
    assert podman.writer.closed


async def test_a_command_that_never_ends_answers_timeout() -> None:
    async def feed(reader: asyncio.StreamReader) -> None:
        reader.feed_data(frame(1, b"a little"))  # and then nothing, for ever

    podman = FakePodman(feed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(errors.Timeout, match=r"did not finish within 0\.3 s"):
        await run_captured(podman, "b", ["x"], "1:1", timeout=0.3)  # type: ignore[arg-type]
    assert loop.time() - started < 10
    assert podman.writer.closed
    assert podman.inspected == 1  # it looked for the process to kill
