"""boxd/limits.py, the manifest's bounded YAML and the loop watch."""

from __future__ import annotations

import asyncio
import time

import pytest

from boxd import limits, manifest
from boxd.errors import InvalidArgument, TooLarge
from boxd.loopwatch import LoopWatch


def test_each_limit_has_a_named_error():
    with pytest.raises(TooLarge, match="the box name is longer than 4096 bytes"):
        limits.string("x" * 4097, "the box name")
    limits.string("é" * 2048, "a name")
    with pytest.raises(TooLarge):
        limits.string("é" * 2049, "a name")  # bytes, not characters
    with pytest.raises(TooLarge, match="more than 4096 entries"):
        limits.argv([b"x"] * 4097)
    with pytest.raises(TooLarge, match="larger than 262144 bytes"):
        limits.argv([b"x" * 100_000] * 3)
    with pytest.raises(TooLarge, match="more than 1024 variables"):
        limits.spawn_env({f"V{i}": "" for i in range(1025)})
    with pytest.raises(TooLarge, match="more than 16 entries"):
        limits.options({f"k{i}": 0 for i in range(17)})
    with pytest.raises(TooLarge, match="volumes has more than 64"):
        limits.box_settings({"volumes": ["/a:/b"] * 65})


def test_a_manifest_over_the_limit_is_refused_before_it_is_read():
    text = "boxes:\n  a: {}\n#" + "x" * limits.MANIFEST_BYTES
    with pytest.raises(TooLarge, match="the manifest is longer than"):
        manifest.parse(text)


@pytest.mark.parametrize("text, problem", [
    ("boxes: &b\n  a: {}\nmore: *b\n", "anchors and aliases"),
    ("boxes:\n  a:\n    packages: &p [git]\n", "anchors and aliases"),
    ("boxes: " + "[" * 5000, "nested more than 16 levels"),
])
def test_yaml_bombs_are_refused(text, problem):
    with pytest.raises(InvalidArgument, match=problem):
        manifest.parse(text)


def test_manifest_values_have_limits_too():
    text = "boxes:\n  a:\n    packages: [" + ", ".join(["git"] * 65) + "]\n"
    with pytest.raises(TooLarge, match=r"line 2 .*packages has more than 64"):
        manifest.parse(text)


async def test_parsing_happens_off_the_loop():
    watch = LoopWatch()
    watch.start()
    text = "boxes:\n" + "".join(f"  b{i}: {{packages: [a, b, c]}}\n"
                                for i in range(4000))[: limits.MANIFEST_BYTES - 20]
    with pytest.raises(InvalidArgument, match="at most 64 boxes"):
        await manifest.parse_off_loop(text)
    watch.stop()
    assert watch.longest < 0.5


async def test_the_loop_watch_sees_a_stall():
    watch = LoopWatch()
    watch.start()
    await asyncio.sleep(0.05)
    time.sleep(0.12)  # noqa: ASYNC251 (holds the loop, as blocking work would)
    await asyncio.sleep(0.05)
    watch.stop()
    assert watch.longest >= 0.08
