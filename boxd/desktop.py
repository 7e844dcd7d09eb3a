"""Desktop entries for boxes: the launcher that opens a terminal in a box, and host copies of a
box's applications whose Exec runs them through boxctl. Pure text work; no I/O here."""

from __future__ import annotations

import re
import shlex

_GROUP_RE = re.compile(r"^\[(.+)\]\s*$")
_DROPPED_KEYS = ("TryExec", "DBusActivatable")


def exported_app(text: str, box: str) -> str:
    """Rewrite an application's .desktop from inside `box` for the host: Exec goes through
    `boxctl run` (field codes such as %U kept), names say which box, and keys that would make the
    host look for the program itself (TryExec, DBusActivatable) are dropped."""
    out = []
    group = ""
    for line in text.splitlines():
        match = _GROUP_RE.match(line)
        if match:
            group = match.group(1)
            out.append(line)
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        in_entry = group == "Desktop Entry" or group.startswith("Desktop Action ")
        if not sep or not in_entry or line.lstrip().startswith("#"):
            out.append(line)
        elif key in _DROPPED_KEYS:
            continue
        elif key == "Exec":
            out.append(f"Exec=boxctl run -c {shlex.quote(box)} -- {value.strip()}")
        elif group == "Desktop Entry" and (key == "Name" or key.startswith("Name[")):
            out.append(f"{key}={value.strip()} (on {box})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def box_launcher(box: str) -> str:
    """A launcher that opens a terminal in the box, with an action to remove the box."""
    quoted = shlex.quote(box)
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        f"Name={box} (box)\n"
        f"Comment=A terminal in the box {box}\n"
        "Icon=utilities-terminal\n"
        f"Exec=boxctl terminal {quoted}\n"
        "Terminal=false\n"
        "Categories=System;TerminalEmulator;\n"
        "Actions=remove;\n"
        "\n"
        "[Desktop Action remove]\n"
        f"Name=Remove the box {box}\n"
        f"Exec=boxctl rm -f {quoted}\n"
    )


def app_id(name: str) -> str:
    """A safe file-name part for an application id (gedit, org.gnome.TextEditor)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:128]


def icon_name(text: str) -> str:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "Icon":
            return value.strip()
    return ""
