"""How much of anything one call may hand boxd. Every input has a limit here, checked before any
work is done for it; going over one is io.github.boxd1.Error.TooLarge, which names the limit.

The wire has its own, coarser bounds (boxd/bus/wire.py: 1 MiB and 16,384 values a message).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from boxd.errors import TooLarge

MANIFEST_BYTES = 128 * 1024
STRING_BYTES = 4096          # names, paths, image references, values, export names
ARGV_COUNT = 4096
ARGV_BYTES = 256 * 1024      # the whole argv; Linux takes at most 128 KiB per argument
ENV_COUNT = 1024
ENV_BYTES = 256 * 1024
OPTIONS_COUNT = 16           # entries of an a{sv} options dict
LIST_COUNT = 64              # volumes, packages, hooks, exports of one box
BOX_ENV_COUNT = 256


def _size(value: str | bytes) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))


def string(value: str | bytes, what: str, limit: int = STRING_BYTES) -> None:
    # len() first: a 1 MiB string need not be encoded to be refused
    if len(value) > limit or _size(value) > limit:
        raise TooLarge(f"{what} is longer than {limit} bytes")


def strings(values: Iterable[str | bytes], what: str, count: int, total: int | None = None,
            each: int = STRING_BYTES) -> None:
    """At most `count` values of `each` bytes, `total` bytes in all."""
    values = list(values)
    if len(values) > count:
        raise TooLarge(f"{what} has more than {count} entries")
    size = 0
    for value in values:
        string(value, f"an entry of {what}", each)
        size += _size(value)
    if total is not None and size > total:
        raise TooLarge(f"{what} is larger than {total} bytes in all")


def env(values: Mapping[str, str], what: str, count: int, total: int | None = None) -> None:
    if len(values) > count:
        raise TooLarge(f"{what} has more than {count} variables")
    strings([*values.keys(), *values.values()], what, 2 * count, total)


def argv(values: list[bytes]) -> None:
    strings(values, "the command line", ARGV_COUNT, ARGV_BYTES, each=ARGV_BYTES)


def spawn_env(values: Mapping[str, str]) -> None:
    env(values, "the environment", ENV_COUNT, ENV_BYTES)


def options(values: Mapping[str, Any], what: str = "options") -> None:
    if len(values) > OPTIONS_COUNT:
        raise TooLarge(f"{what} has more than {OPTIONS_COUNT} entries")
    for key in values:
        string(key, f"an option's name in {what}")


def box_settings(values: Mapping[str, Any]) -> None:
    """CreateBox/Configure options and a manifest's box entries, once typed."""
    for key in ("home", "hostname", "image"):
        if isinstance(values.get(key), str):
            string(values[key], key)
    for key in ("volumes", "packages", "hooks", "exports"):
        listed = values.get(key)
        if isinstance(listed, list):
            if len(listed) > LIST_COUNT:
                raise TooLarge(f"{key} has more than {LIST_COUNT} entries")
            strings([v for v in listed if isinstance(v, str)], key, LIST_COUNT)
    if isinstance(values.get("env"), dict):
        env({str(k): v for k, v in values["env"].items() if isinstance(v, str)}, "env",
            BOX_ENV_COUNT)


def manifest(text: str) -> None:
    string(text, "the manifest", MANIFEST_BYTES)
