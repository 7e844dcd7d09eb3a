"""boxctl doctor: check what boxd needs, from the user's side, and say how to fix what is wrong."""

from __future__ import annotations

import grp
import os
from collections.abc import Callable
from dataclasses import dataclass

from boxd import __version__, faults
from boxd.client import BOX, SESSION, BoxdClient, CallError, Unreachable
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
    import select

    chunks = []
    with os.fdopen(read_end, "rb", buffering=0) as output:
        while True:
            # boxd holds the write end: a stopped boxd must not keep doctor waiting for EOF.
            if not select.select([output], [], [], client.timeout)[0]:
                raise Unreachable("silent", f"boxd did not answer within {client.timeout:g} s",
                                  client.bus)
            chunk = output.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return int(client.call(path, SESSION, "Wait")[0]), b"".join(chunks)


def run_checks(connect: Callable[[], BoxdClient], user_bus: bool) -> list[Check]:
    """Every check, failed ones included: doctor prints its whole table whatever is down."""
    bus = "session" if user_bus else "system"
    try:
        client = connect()
    except Exception as exc:
        reason = exc.message if isinstance(exc, Unreachable) else \
            f"cannot connect to the {bus} bus ({exc})"
        return [Check("bus", False, reason, faults.start_bus(bus))]
    checks = [Check("bus", True, f"connected to the {bus} bus")]
    try:
        _daemon_checks(client, user_bus, checks)
    except Unreachable as exc:  # boxd went away or fell silent half-way
        checks.append(Check("boxd", False, f"boxd stopped answering ({exc.message})",
                            faults.start_boxd(bus)))
    finally:
        client.close()
    return checks


def _daemon_checks(client: BoxdClient, user_bus: bool, checks: list[Check]) -> None:
    bus = "session" if user_bus else "system"

    def prop(name: str) -> object:
        return client.call(MANAGER_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                           ("io.github.boxd1.Manager", name))[0][1]

    try:
        version = prop("Version")
    except CallError as exc:
        checks.append(Check("boxd", False, f"boxd does not answer ({exc.message or exc.name})",
                            faults.start_boxd(bus)))
        if not user_bus:  # these need no boxd
            checks.append(_polkit(client))
            checks.append(_groups())
        return
    same = version == __version__
    checks.append(Check("boxd", True, f"boxd {version} is running"
                        + ("" if same else f" (this boxctl is {__version__})")))
    podman = bool(prop("PodmanAvailable"))
    checks.append(Check("podman", podman, "podman's REST service answers" if podman else
                        "boxd cannot reach podman's REST service",
                        "" if podman else faults.start_podman()))
    if not user_bus:
        checks.append(_polkit(client))
        checks.append(_groups())
    default = str(prop("DefaultImage"))
    try:
        images = [n for image in client.call(MANAGER_PATH, "io.github.boxd1.Manager",
                                             "ListImages")[0] for n in image[1]]
    except Unreachable:
        raise
    except CallError as exc:
        checks.append(Check("image", False, f"cannot list images to look for {default} "
                                            f"({exc.message or exc.name})", _fix_for(exc)))
    else:
        checks.append(Check("image", default in images,
                            f"the default image {default} is "
                            + ("here" if default in images else "missing"),
                            "" if default in images else
                            "sudo boxctl image build-default (debootstrap, no registry needed)"))
    checks += _boxes(client, str(version))


def _fix_for(exc: CallError) -> str:
    return faults.start_podman() if exc.short_name == "PodmanUnavailable" else \
        "see the checks above"


def _polkit(client: BoxdClient) -> Check:
    from jeepney import DBusAddress, new_method_call

    bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                      interface="org.freedesktop.DBus")
    try:
        reply = client.connection.send_and_get_reply(
            new_method_call(bus, "NameHasOwner", "s", ("org.freedesktop.PolicyKit1",)),
            timeout=client.timeout)
    except (OSError, TimeoutError) as exc:
        return Check("polkit", False, f"the bus did not say whether polkitd runs ({exc})",
                     faults.start_bus())
    running = bool(reply.body and reply.body[0])
    return Check("polkit", running, "polkitd is running" if running else
                 "polkitd is not running: boxd denies everyone but root",
                 "" if running else faults.start_polkit())


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
    try:
        boxes = client.call(MANAGER_PATH, "io.github.boxd1.Manager", "ListBoxes")[0]
    except Unreachable:
        raise
    except CallError as exc:
        return [Check("boxes", False, f"cannot list your boxes ({exc.message or exc.name})",
                      _fix_for(exc))]
    for box in boxes:
        name, state = box[1], box[4]
        if state != "running":
            checks.append(Check(f"box {name}", True, f"{state}; its entry point runs at start"))
            continue
        try:
            status, output = capture(client, name, ["cat", "/run/.boxdenv"])
        except Unreachable:
            raise
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
