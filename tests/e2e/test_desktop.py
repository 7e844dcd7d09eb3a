"""Desktop plumbing: an X11 client in a box reaches the host's X server, a sound client reaches
the user's PulseAudio server, and a D-Bus client reaches the user's session bus on the host; all
through what boxd passes (DISPLAY, XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS) and binds (/tmp with
the X11 sockets, the user's runtime dir, the home with the Pulse cookie)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import bed
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
DISPLAY = ":77"


@pytest.fixture(scope="module")
def desktop(boxd_bed, alice):
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (scripts/install-deps.sh installs it)")
    # -noreset: the X server must keep what the box drew after the box's client disconnects.
    xvfb = subprocess.Popen(["Xvfb", DISPLAY, "-nolisten", "tcp", "-noreset"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runtime = Path(f"/run/user/{alice['uid']}")
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, alice["uid"], alice["gid"])
    runtime.chmod(0o700)
    bus = runtime / "bus"
    session_bus = subprocess.Popen(
        ["runuser", "-u", alice["name"], "--", "dbus-daemon", "--session", "--nofork",
         f"--address=unix:path={bus}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    pulse = subprocess.Popen(
        ["runuser", "-u", alice["name"], "--", "env", f"XDG_RUNTIME_DIR={runtime}",
         f"HOME={alice['home']}", "pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n",
         "--load=module-native-protocol-unix", "--load=module-null-sink"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bed.wait_for(lambda: bus.exists() and Path("/tmp/.X11-unix/X77").exists()
                 and (runtime / "pulse" / "native").exists(), 60,
                 "the session bus, Xvfb :77 and pulseaudio")
    user = alice["name"]
    home = Path(alice["home"])
    (home / "desk.yaml").write_text(
        "boxes:\n  alice-desk: {packages: [x11-utils, x11-xserver-utils, dbus-bin, "
        "pulseaudio-utils]}\n")
    result = subprocess.run(boxctl_argv(boxd_bed, user, "apply", str(home / "desk.yaml")),
                            capture_output=True, cwd="/")
    assert result.returncode == 0, result.stderr
    # Started after the runtime dir exists: the entry point binds it at every start.
    assert boxd_bed.box("alice-desk", "Start", user=user) == {"body": []}
    yield {"bus": f"unix:path={bus}", "runtime": str(runtime)}
    boxd_bed.box("alice-desk", "Remove", "b", [True])
    pulse.terminate()
    pulse.wait(10)
    session_bus.terminate()
    xvfb.terminate()
    session_bus.wait(10)
    xvfb.wait(10)


def run_in_desk(boxd_bed, alice, env: dict[str, str], *command: str):
    argv = boxctl_argv(boxd_bed, alice["name"], "run", "alice-desk", "--", *command)
    at = argv.index("env") + 1
    argv[at:at] = [f"{k}={v}" for k, v in env.items()]
    return subprocess.run(argv, capture_output=True, timeout=120, cwd="/")


def test_x11_client_in_the_box_reaches_the_host_display(boxd_bed, alice, desktop):
    result = run_in_desk(boxd_bed, alice, {"DISPLAY": DISPLAY}, "xdpyinfo")
    assert result.returncode == 0, result.stderr
    assert b"name of display:    :77" in result.stdout
    assert b"dimensions:" in result.stdout


def test_x11_client_in_the_box_draws_on_the_host_screen(boxd_bed, alice, desktop):
    """xsetroot in the box paints the host display's root window; a screenshot taken on the host
    (xwd) shows it: every pixel is the colour the box asked for, not the blank black."""
    if not shutil.which("xwd"):
        pytest.skip("xwd is not installed (x11-apps)")
    result = run_in_desk(boxd_bed, alice, {"DISPLAY": DISPLAY}, "xsetroot", "-solid", "#ff0000")
    assert result.returncode == 0, result.stderr
    shot = subprocess.run(["xwd", "-root", "-silent", "-display", DISPLAY],
                          capture_output=True, check=True).stdout
    colours = _xwd_colours(shot)
    assert colours == {(255, 0, 0)}, f"screen colours: {sorted(colours)[:5]}"


def _xwd_colours(data: bytes) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of a 24/32-bit TrueColor XWD screenshot."""
    import struct

    fields = struct.unpack(">25I", data[:100])
    header_size, width, height = fields[0], fields[4], fields[5]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    ncolors = fields[19]
    assert bits_per_pixel == 32, bits_per_pixel
    pixels = data[header_size + ncolors * 12:]
    order = "<" if byte_order == 0 else ">"
    seen = set()
    for y in range(0, height, max(1, height // 16)):
        for x in range(0, width, max(1, width // 16)):
            (value,) = struct.unpack_from(f"{order}I", pixels, y * bytes_per_line + x * 4)
            seen.add(((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))
    return seen


def test_session_bus_of_the_host_from_the_box(boxd_bed, alice, desktop):
    result = run_in_desk(boxd_bed, alice, {"DBUS_SESSION_BUS_ADDRESS": desktop["bus"]},
                         "dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                         "/org/freedesktop/DBus", "org.freedesktop.DBus.GetId")
    assert result.returncode == 0, result.stderr
    host_id = subprocess.run(["runuser", "-u", alice["name"], "--", "dbus-send",
                              f"--bus={desktop['bus']}", "--print-reply",
                              "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus.GetId"], capture_output=True).stdout
    assert result.stdout.split(b"string")[-1] == host_id.split(b"string")[-1]


def test_sound_client_in_the_box_reaches_the_users_pulseaudio(boxd_bed, alice, desktop):
    if not shutil.which("pulseaudio"):
        pytest.skip("pulseaudio is not installed (scripts/install-deps.sh installs it)")
    result = run_in_desk(boxd_bed, alice, {"XDG_RUNTIME_DIR": desktop["runtime"]}, "pactl",
                         "info")
    assert result.returncode == 0, result.stderr
    assert f"Server String: {desktop['runtime']}/pulse/native".encode() in result.stdout
    assert b"Default Sink: null" in result.stdout
