"""boxctl doctor: check what boxd needs, from the user's side, and say how to fix what is wrong."""

from __future__ import annotations

import grp
import os
from collections.abc import Callable
from dataclasses import dataclass

from boxd import __version__
from boxd.client import BOX, SESSION, BoxdClient, CallError
from boxd.paths import MANAGER_PATH, box_path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def capture(client: BoxdClient, name: str, argv: list[str]) -> tuple[int, bytes]:
    """Run a command in a box with its output into a pipe; (status, output)."""
    read_end, write_end = os.pipe()
    try:
        path = client.call(box_path(name), BOX, "Spawn", "ayaaya{uh}a{ss}a{sv}",
                           (b"/", [a.encode() for a in argv], {1: write_end, 2: write_end},
                            {}, {"tty": ("b", False)}))[0]
    finally:
        os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as output:
        while chunk := output.read(65536):
            chunks.append(chunk)
    return int(client.call(path, SESSION, "Wait")[0]), b"".join(chunks)


def run_checks(connect: Callable[[], BoxdClient], user_bus: bool) -> list[Check]:
    checks: list[Check] = []
    bus = "session" if user_bus else "system"
    try:
        client = connect()
    except Exception as exc:
        return [Check("bus", False, f"cannot connect to the {bus} bus ({exc})",
                      "start D-Bus (systemctl start dbus), or check DBUS_SYSTEM_BUS_ADDRESS")]
    checks.append(Check("bus", True, f"connected to the {bus} bus"))
    try:
        def prop(name: str) -> object:
            return client.call(MANAGER_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                               ("io.github.boxd1.Manager", name))[0][1]

        try:
            version = prop("Version")
        except CallError as exc:
            checks.append(Check("boxd", False, f"boxd does not answer ({exc.message or exc.name})",
                                "systemctl start boxd (or: sudo scripts/boxd-up.sh)"))
            return checks
        same = version == __version__
        checks.append(Check("boxd", True, f"boxd {version} is running"
                            + ("" if same else f" (this boxctl is {__version__})")))
        podman = bool(prop("PodmanAvailable"))
        checks.append(Check("podman", podman, "podman's REST service answers" if podman else
                            "boxd cannot reach podman's REST service",
                            "" if podman else "systemctl enable --now podman.socket"))
        if not user_bus:
            checks.append(_polkit(client))
            checks.append(_groups())
        default = str(prop("DefaultImage"))
        images = [n for image in client.call(MANAGER_PATH, "io.github.boxd1.Manager",
                                             "ListImages")[0] for n in image[1]]
        checks.append(Check("image", default in images,
                            f"the default image {default} is "
                            + ("here" if default in images else "missing"),
                            "" if default in images else
                            "sudo boxctl image build-default (debootstrap, no registry needed)"))
        checks += _boxes(client, str(version))
    finally:
        client.close()
    return checks


def _polkit(client: BoxdClient) -> Check:
    from jeepney import DBusAddress, new_method_call

    bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                      interface="org.freedesktop.DBus")
    reply = client.connection.send_and_get_reply(
        new_method_call(bus, "NameHasOwner", "s", ("org.freedesktop.PolicyKit1",)))
    running = bool(reply.body and reply.body[0])
    return Check("polkit", running, "polkitd is running" if running else
                 "polkitd is not running: boxd denies everyone but root",
                 "" if running else "systemctl start polkit")


def _groups() -> Check:
    if os.getuid() == 0:
        return Check("access", True, "you are root: every box is yours to manage")
    names = {grp.getgrgid(g).gr_name for g in os.getgroups()}
    member = names & {"boxd", "boxd-admin"}
    return Check("access", bool(member),
                 f"you are in {', '.join(sorted(member))}" if member else
                 "you are not in the group boxd: polkit will ask for an administrator "
                 "outside an active local session",
                 "" if member else f"sudo usermod -aG boxd {os.environ.get('USER', 'USER')}")


def _boxes(client: BoxdClient, version: str) -> list[Check]:
    checks = []
    for box in client.call(MANAGER_PATH, "io.github.boxd1.Manager", "ListBoxes")[0]:
        name, state = box[1], box[4]
        if state != "running":
            checks.append(Check(f"box {name}", True, f"{state}; its entry point runs at start"))
            continue
        try:
            status, output = capture(client, name, ["cat", "/run/.boxdenv"])
        except CallError as exc:
            checks.append(Check(f"box {name}", False, f"cannot look inside: {exc.message}",
                                "see the checks above"))
            continue
        fields = dict(line.split("=", 1) for line in output.decode(errors="replace").splitlines()
                      if "=" in line)
        if status != 0 or "boxd_version" not in fields:
            checks.append(Check(f"box {name}", False, "its entry point did not run",
                                f"boxctl stop {name} && boxctl start {name}"))
        elif fields["boxd_version"] != version:
            checks.append(Check(f"box {name}", False,
                                f"runs boxd {fields['boxd_version']}'s entry point set-up",
                                f"boxctl stop {name} && boxctl start {name} (no re-create)"))
        else:
            checks.append(Check(f"box {name}", True, f"running, set up by boxd {version}"))
    return checks


def report(checks: list[Check]) -> int:
    for check in checks:
        print(f"{'✔' if check.ok else '✘'} {check.name}: {check.detail}")
        if check.fix:
            print(f"    fix: {check.fix}")
    return 0 if all(c.ok for c in checks) else 1
