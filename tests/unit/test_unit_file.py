"""boxd.service's sandbox must not give boxd a view of host paths other than podman's: boxd
checks the sources of volumes in its own view (symlinks resolved, existence, whose home), and
podman binds them from the host's. Read-only views are fine; hidden or replaced ones are not.
(The syscall, socket and capability parts are checked against the running daemon in
tests/e2e/test_systemd_sandbox.py.)"""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "boxd.service"

# Options that replace or hide part of the file system for the service only.
VIEW_CHANGING = {
    "PrivateTmp": lambda v: v.lower() not in ("no", "false", "0"),
    "ProtectHome": lambda v: v.lower() in ("yes", "true", "1", "tmpfs"),
    "TemporaryFileSystem": bool,
    "InaccessiblePaths": bool,
    "BindPaths": bool,
    "BindReadOnlyPaths": bool,
    "RootDirectory": bool,
    "RootImage": bool,
}


def service_options() -> list[tuple[str, str]]:
    options = []
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options.append((key.strip(), value.strip()))
    return options


def test_the_unit_leaves_boxd_the_hosts_view_of_paths_users_may_bind() -> None:
    options = service_options()
    assert ("ProtectSystem", "strict") in options  # the read-only view this relies on
    changing = [f"{key}={value}" for key, value in options
                if key in VIEW_CHANGING and VIEW_CHANGING[key](value)]
    assert changing == [], f"these give boxd a file system view other than podman's: {changing}"
