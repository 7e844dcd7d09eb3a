"""Declarative boxes: a YAML manifest names boxes and what they should be; apply() makes it so.

    boxes:
      dev:
        image: localhost/boxd-debian:12
        volumes: [/srv/data:/data:ro]
        env: {EDITOR: vim}
        packages: [git]
        hooks: ["echo started > /tmp/started"]

Errors name the manifest's line. Parsing knows YAML and the box model; nothing about D-Bus.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import yaml

from boxd import limits
from boxd.errors import BoxdError, InvalidArgument
from boxd.exports import APP_NAME_RE as _APP_RE
from boxd.model import BoxSettings, validate_image, validate_name

# What each box entry may say, with the YAML type each key must have.
BOX_KEYS: dict[str, type] = {"image": str, "home": str, "hostname": str, "volumes": list,
                             "env": dict, "packages": list, "hooks": list, "exports": list}
MAX_BOXES = 64

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "boxd manifest",
    "type": "object",
    "additionalProperties": False,
    "required": ["boxes"],
    "properties": {"boxes": {
        "type": "object",
        "maxProperties": MAX_BOXES,
        "propertyNames": {"pattern": "^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"},
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "image": {"type": "string", "description": "image (default: boxd's default)"},
                "home": {"type": "string", "description": "home directory shared with the box"},
                "hostname": {"type": "string", "description": "the box's hostname"},
                "volumes": {"type": "array", "items": {"type": "string"},
                            "description": "HOST_PATH:BOX_PATH[:ro], bound at every start"},
                "env": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "environment for shells and commands in the box"},
                "packages": {"type": "array", "items": {"type": "string"},
                             "description": "installed at start when missing"},
                "hooks": {"type": "array", "items": {"type": "string"},
                          "description": "sh commands run as root at every start"},
                "exports": {"type": "array", "items": {"type": "string"},
                            "description": "applications (.desktop names) to put on the host"},
            },
        },
    }},
}


def schema_json() -> str:
    return json.dumps(SCHEMA, indent=2)


@dataclass(frozen=True)
class BoxEntry:
    name: str
    image: str                 # "" means the default image
    options: dict[str, Any]    # CreateBox options, validated
    exports: tuple[str, ...]   # applications to export
    settings: BoxSettings      # what those options make
    line: int


# Parsing is pure Python: one at a time, in a worker thread, so the event loop keeps serving.
_parsing = asyncio.Semaphore(1)
MAX_DEPTH = 16  # a manifest nests four levels deep; deeper is refused, not recursed into


class _BoundedLoader(yaml.SafeLoader):
    """YAML without anchors and aliases (one alias can stand for a billion nodes) or deep
    nesting."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in a manifest",
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


async def parse_off_loop(text: str) -> list[BoxEntry]:
    """parse() within the size limit, in a worker thread, one manifest at a time."""
    limits.manifest(text)
    async with _parsing:
        return await asyncio.to_thread(parse, text)


def parse(text: str) -> list[BoxEntry]:
    """Validate a manifest; errors say which line is wrong and why."""
    limits.manifest(text)
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidArgument(f"manifest {where}not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    if root is None:
        raise InvalidArgument("manifest is empty: it needs a 'boxes:' mapping")
    top = _mapping(root, "the manifest")
    for key_node, _ in root.value:
        if key_node.value != "boxes":
            raise InvalidArgument(f"manifest line {_line(key_node)}: unknown key "
                                  f"{key_node.value!r} (the top level takes only 'boxes')")
    if "boxes" not in top:
        raise InvalidArgument("manifest has no 'boxes:' mapping")
    boxes_node = top["boxes"]
    _mapping(boxes_node, "'boxes'")
    if len(boxes_node.value) > MAX_BOXES:
        raise InvalidArgument(f"a manifest takes at most {MAX_BOXES} boxes")
    entries = []
    for name_node, box_node in boxes_node.value:
        entries.append(_entry(name_node, box_node))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise InvalidArgument("manifest names a box twice")
    return entries


def _entry(name_node: yaml.Node, box_node: yaml.Node) -> BoxEntry:
    line = _line(name_node)
    name = name_node.value if isinstance(name_node, yaml.ScalarNode) else ""
    try:
        validate_name(name)
    except BoxdError as exc:
        raise InvalidArgument(f"manifest line {line}: {exc.message}") from None
    if isinstance(box_node, yaml.ScalarNode) and box_node.value in ("", "~", "null"):
        return BoxEntry(name, "", {}, (), BoxSettings(), line)
    _mapping(box_node, f"box {name!r}")
    values: dict[str, Any] = {}
    for key_node, value_node in box_node.value:
        key = key_node.value
        if key not in BOX_KEYS:
            raise InvalidArgument(f"manifest line {_line(key_node)}: unknown key {key!r} for box "
                                  f"{name!r} (known: {', '.join(BOX_KEYS)})")
        value = yaml.safe_load(yaml.serialize(value_node))
        if not isinstance(value, BOX_KEYS[key]):
            raise InvalidArgument(f"manifest line {_line(key_node)}: {key!r} must be a "
                                  f"{_kind(BOX_KEYS[key])}")
        values[key] = value
    try:
        limits.box_settings(values)
    except BoxdError as exc:
        raise type(exc)(f"manifest line {line} (box {name!r}): {exc.message}") from None
    image = values.pop("image", "")
    exports = values.pop("exports", [])
    if not all(isinstance(e, str) and _APP_RE.fullmatch(e) for e in exports):
        raise InvalidArgument(f"manifest line {line} (box {name!r}): exports must be "
                              "application names such as org.gnome.TextEditor")
    try:
        if image:
            validate_image(image)
        settings = BoxSettings().updated(values)
    except BoxdError as exc:
        raise InvalidArgument(f"manifest line {line} (box {name!r}): {exc.message}") from None
    return BoxEntry(name, image, values, tuple(exports), settings, line)


def _mapping(node: yaml.Node, what: str) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise InvalidArgument(f"manifest line {_line(node)}: {what} must be a mapping")
    return {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _kind(kind: type) -> str:
    return {str: "string", list: "list", dict: "mapping"}[kind]
