"""Launchers and exported apps: written into the owner's home from inside the box, valid for the
desktop, launching the app inside the box, and gone when the box goes."""

from __future__ import annotations

import base64
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
# A 1x1 PNG, enough to be an icon.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
                       "hKmMIQAAAABJRU5ErkJggg==")
APP = """\
[Desktop Entry]
Type=Application
Name=Boxd Test App
Exec=boxd-test-app %U
TryExec=boxd-test-app
DBusActivatable=false
Icon=boxd-test-app
Categories=Utility;
"""
PROGRAM = """#!/bin/sh
{ cat /run/.boxdenv; echo "args=$*"; } > "$HOME/app-ran"
"""


@pytest.fixture(scope="module")
def app_box(boxd_bed, alice):
    user = alice["name"]
    assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-app", "", {}],
                                           user=user)
    assert boxd_bed.box("alice-app", "Start", user=user) == {"body": []}
    podman = boxd_bed.podman
    podman.cli("exec", "-i", "alice-app", "sh", "-c", "cat > /usr/local/bin/boxd-test-app && "
               "chmod 755 /usr/local/bin/boxd-test-app", input=PROGRAM.encode())
    podman.cli("exec", "-i", "alice-app", "sh", "-c",
               "mkdir -p /usr/share/applications && "
               "cat > /usr/share/applications/boxd-test-app.desktop", input=APP.encode())
    podman.cli("exec", "-i", "alice-app", "sh", "-c",
               "mkdir -p /usr/share/icons/hicolor/48x48/apps && "
               "cat > /usr/share/icons/hicolor/48x48/apps/boxd-test-app.png", input=PNG)
    yield "alice-app"
    if podman.cli("container", "exists", "alice-app", check=False).returncode == 0:
        boxd_bed.box("alice-app", "Remove", "b", [True])


def boxctl(boxd_bed, alice, *args):
    return subprocess.run(boxctl_argv(boxd_bed, alice["name"], *args), capture_output=True,
                          timeout=120, cwd="/")


def test_export_app_bin_and_launcher_then_removal_cleans_up(boxd_bed, alice, app_box):
    home = Path(alice["home"])
    result = boxctl(boxd_bed, alice, "export", app_box, "--app", "boxd-test-app")
    assert result.returncode == 0, result.stderr
    entry = home / ".local/share/applications/boxd-alice-app-boxd-test-app.desktop"
    icon = home / ".local/share/icons/hicolor/48x48/apps/boxd-test-app.png"
    assert entry.stat().st_uid == alice["uid"]  # written as alice, from the box
    assert icon.read_bytes() == PNG
    text = entry.read_text()
    assert "Exec=boxctl run -c alice-app -- boxd-test-app %U" in text
    assert "Name=Boxd Test App (on alice-app)" in text and "TryExec" not in text
    validate = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True,
                              text=True)
    assert validate.returncode == 0 and not validate.stdout.strip(), validate.stdout

    # Launch it the way a desktop would: the Exec line, field code filled in, as alice.
    exec_line = next(line[5:] for line in text.splitlines() if line.startswith("Exec="))
    argv = [a if a != "%U" else "file:///tmp/x" for a in shlex.split(exec_line)]
    launcher = boxctl_argv(boxd_bed, alice["name"], *argv[1:])
    assert subprocess.run(launcher, capture_output=True, timeout=60, cwd="/").returncode == 0
    ran = (home / "app-ran").read_text()
    assert "name=alice-app" in ran and "args=file:///tmp/x" in ran  # it ran inside the box

    assert boxctl(boxd_bed, alice, "export", app_box, "--bin", "/usr/bin/id").returncode == 0
    wrapper = home / ".local/bin/id"
    assert "boxctl run -c 'alice-app' -- '/usr/bin/id'" in wrapper.read_text()
    result = boxctl(boxd_bed, alice, "generate-entry", app_box)
    assert result.returncode == 0, result.stderr
    own = home / ".local/share/applications/boxd-alice-app.desktop"
    assert subprocess.run(["desktop-file-validate", str(own)]).returncode == 0

    listed = boxctl(boxd_bed, alice, "export", app_box, "--list").stdout.decode()
    assert "app\tboxd-test-app" in listed and "bin\tid" in listed and "launcher\talice-app" \
        in listed
    assert boxctl(boxd_bed, alice, "export", app_box, "--delete", "id").returncode == 0
    assert not wrapper.exists()

    missing = boxctl(boxd_bed, alice, "export", app_box, "--app", "no-such-app")
    assert missing.returncode == 1 and b"has no application 'no-such-app'" in missing.stderr

    assert boxctl(boxd_bed, alice, "stop", app_box).returncode == 0
    assert boxctl(boxd_bed, alice, "rm", app_box).returncode == 0  # starts it to clean up
    assert not entry.exists() and not icon.exists() and not own.exists()


def test_manifest_exports_apps(boxd_bed, alice):
    """A manifest's exports: the app (here made by a start hook) lands on the host on apply."""
    home = Path(alice["home"])
    hook = ("mkdir -p /usr/share/applications && printf '%s\\n' '[Desktop Entry]' "
            "'Type=Application' 'Name=Hooked' 'Exec=true' > "
            "/usr/share/applications/hooked.desktop")
    manifest = home / "exports.yaml"
    manifest.write_text(yaml.safe_dump(
        {"boxes": {"alice-mx": {"hooks": [hook], "exports": ["hooked"]}}}))
    result = boxctl(boxd_bed, alice, "apply", str(manifest))
    assert result.returncode == 0, result.stderr
    entry = home / ".local/share/applications/boxd-alice-mx-hooked.desktop"
    try:
        assert "Name=Hooked (on alice-mx)" in entry.read_text()
        again = boxctl(boxd_bed, alice, "apply", str(manifest))
        assert again.stdout.decode().strip() == "alice-mx: unchanged"
    finally:
        boxctl(boxd_bed, alice, "rm", "-f", "alice-mx")
    assert not entry.exists()
