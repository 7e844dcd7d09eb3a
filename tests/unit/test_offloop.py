"""Bounded lanes for blocking calls: off the loop, with a deadline, refusing when full."""

from __future__ import annotations

import asyncio
import threading

import pytest

from boxd import errors
from boxd.offloop import Lane


async def test_a_call_runs_in_another_thread_and_returns_or_raises() -> None:
    lane = Lane("t", threads=2, waiting=2, timeout=10)
    here = threading.get_ident()
    assert await lane.run("tests", threading.get_ident) != here
    assert await lane.run("tests", max, 3, 7) == 7
    with pytest.raises(KeyError):
        await lane.run("tests", {}.__getitem__, "missing")
    assert lane.busy == 0


async def test_a_hung_call_answers_timeout_and_the_loop_keeps_running() -> None:
    lane = Lane("t", threads=1, waiting=1, timeout=0.5)
    release = threading.Event()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(errors.Timeout, match=r"path checks did not answer within 0\.5 s"):
            await lane.run("path checks", release.wait, 60)
    finally:
        ticker.cancel()
    assert ticks >= 10  # the loop went on while the call hung
    # The hung thread keeps its place until it really returns: the next call cannot have it.
    assert lane.busy == 1
    with pytest.raises(errors.Timeout):
        await lane.run("path checks", lambda: None)
    release.set()
    for _ in range(500):
        if lane.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert lane.busy == 0
    assert await lane.run("path checks", lambda: 5) == 5


async def test_a_full_lane_refuses_at_once_rather_than_queueing() -> None:
    lane = Lane("t", threads=1, waiting=1, timeout=30)
    release = threading.Event()
    first = asyncio.create_task(lane.run("lookups", release.wait, 30))
    await asyncio.sleep(0)
    second = asyncio.create_task(lane.run("lookups", lambda: "second"))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(errors.Busy, match="too many lookups at once"):
        await lane.run("lookups", lambda: "third")
    assert loop.time() - started < 5
    release.set()
    assert await first is True
    assert await second == "second"
    assert lane.busy == 0


async def test_a_waiter_that_gives_up_does_not_lose_a_thread_place() -> None:
    lane = Lane("t", threads=1, waiting=4, timeout=30)
    release = threading.Event()
    first = asyncio.create_task(lane.run("x", release.wait, 30))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(lane.run("x", lambda: None))
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await lane.run("x", lambda: "after") == "after"
    assert lane.busy == 0
