"""What boxctl says when something between it and its box fails: one line, and a hint that fits
this host (systemd or not, system or session bus). Knows error kinds and hosts; no D-Bus."""

from __future__ import annotations

import os

PODMAN_SOCKET = "/run/podman/podman.sock"


def systemd_host() -> bool:
    """systemd runs this host (as sd_booted() decides: it made /run/systemd/system)."""
    return os.path.isdir("/run/systemd/system")


def start_boxd(bus: str = "system") -> str:
    """How to start boxd (or see why it does not run) here."""
    if bus == "session":
        if systemd_host():
            return "'systemctl --user status boxd-session' says why; start it with " \
                   "'systemctl --user start boxd-session'"
        return "start your own boxd with 'boxd --session &'"
    if systemd_host():
        return "'systemctl status boxd' says why; start it with 'sudo systemctl start boxd'"
    return "this host has no systemd: start boxd as root with 'sudo scripts/boxd-up.sh' " \
           "(or 'sudo boxd --system &')"


def start_bus(bus: str = "system") -> str:
    if bus == "session":
        return "use --user inside your desktop or login session (it has a session bus), or " \
               "leave --user out to use the system's boxd"
    if systemd_host():
        return "start D-Bus with 'sudo systemctl start dbus', or check DBUS_SYSTEM_BUS_ADDRESS"
    return "start the system bus as root ('dbus-daemon --system'), or check " \
           "DBUS_SYSTEM_BUS_ADDRESS"


def start_podman() -> str:
    if systemd_host():
        return "start podman's service: 'sudo systemctl enable --now podman.socket'"
    return f"start podman's service as root: 'podman system service --time=0 " \
           f"unix://{PODMAN_SOCKET} &' (or 'sudo scripts/boxd-up.sh')"


def start_polkit() -> str:
    if systemd_host():
        return "sudo systemctl start polkit"
    return "start it as root: '/usr/lib/polkit-1/polkitd --no-debug &' (or " \
           "'sudo scripts/boxd-up.sh')"


def unreachable_line(kind: str, reason: str, bus: str) -> str:
    """The one line for boxctl failing to reach boxd: `kind` is Unreachable.kind."""
    if kind == "bus":
        return f"cannot reach boxd: {reason} (hint: {start_bus(bus)})"
    if kind == "silent":
        where = ("'systemctl --user status boxd-session'" if bus == "session" else
                 "'systemctl status boxd'") if systemd_host() else "its state in 'ps' (T: stopped)"
        hint = f"is it stopped or stuck? see {where}; or wait longer with BOXCTL_TIMEOUT=SECONDS"
    elif kind == "gone":
        hint = "try again in a moment: " + start_boxd(bus)
    else:
        hint = start_boxd(bus)
    return f"cannot reach boxd: {reason} (hint: {hint})"
