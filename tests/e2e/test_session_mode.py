"""Session mode: a user's own boxd on their own bus, driving their rootless podman. The same
code as the system daemon; the caller is the user, polkit is not involved."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import bed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def session(alice):
    uid, user, home = alice["uid"], alice["name"], Path(alice["home"])
    with open("/etc/subuid") as subuid:
        if not any(line.startswith(f"{user}:") for line in subuid):
            subprocess.run(["usermod", "--add-subuids", "400000-465535", "--add-subgids",
                            "400000-465535", user], check=True)
    runtime = Path(f"/run/user/{uid}")
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, uid, alice["gid"])
    runtime.chmod(0o700)
    root = home / ".boxd-session-test"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "containers.conf").write_text(bed.CONTAINERS_CONF)
    (root / "storage.conf").write_text(bed.STORAGE_CONF.format(root=root, run=runtime / "bt"))
    socket = runtime / "boxd-test-podman.sock"
    address = f"unix:path={runtime}/boxd-test-bus"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime),
           "CONTAINERS_CONF": str(root / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")}
    (root / "boxd.yaml").write_text(yaml.safe_dump({
        "mode": "session", "podman_socket": str(socket), "state_dir": str(root / "state"),
        "bus_address": address, "default_image": bed.DEBIAN_IMAGE, "log_format": "json"}))
    for path in root.rglob("*"):
        os.chown(path, uid, alice["gid"])
    os.chown(root, uid, alice["gid"])
    tarball = root / "debian.tar"
    shutil.copy(bed.ensure_rootfs("debian"), tarball)
    os.chown(tarball, uid, alice["gid"])

    def as_alice(argv, **kwargs):
        return subprocess.Popen(["runuser", "-u", user, "--", "env", "-i",
                                 *[f"{k}={v}" for k, v in env.items()], *argv],
                                start_new_session=True, cwd=str(home), **kwargs)

    procs = [as_alice(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             as_alice(["dbus-daemon", "--session", "--nofork", f"--address={address}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    bed.wait_for(lambda: socket.exists() and (runtime / "boxd-test-bus").exists(), 30,
                 "alice's podman and bus")
    assert as_alice(["podman", "import", "-q", str(tarball), bed.DEBIAN_IMAGE],
                    stdout=subprocess.DEVNULL).wait(300) == 0
    tarball.unlink()
    log = open(root / "boxd.log", "wb")
    procs.append(as_alice([sys.executable, "-m", "boxd.daemon", "--session", "--config",
                           str(root / "boxd.yaml")], stdout=log, stderr=log))
    bed.wait_for(lambda: subprocess.run(["busctl", f"--address={address}", "status",
                                         "io.github.boxd1"], capture_output=True,
                                        user=uid).returncode == 0, 30, "boxd --session")
    yield {"address": address, "env": env, "log": root / "boxd.log"}
    subprocess.run(["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()],
                    "podman", "rm", "-af", "-t", "0"], capture_output=True, cwd=str(home))
    for proc in reversed(procs):
        proc.terminate()
        proc.wait(20)
    shutil.rmtree(root, ignore_errors=True)


def boxctl(alice, session, *args):
    return subprocess.run(["runuser", "-u", alice["name"], "--", "env",
                           f"BOXD_BUS_ADDRESS={session['address']}",
                           str(Path(sys.executable).with_name("boxctl")), "--user", *args],
                          capture_output=True, timeout=300, cwd=alice["home"])


def test_a_users_own_boxd_with_rootless_podman(alice, session):
    started = time.monotonic()
    result = boxctl(alice, session, "create", "mine")
    assert result.returncode == 0, (result.stderr, session["log"].read_text()[-2000:])
    result = boxctl(alice, session, "run", "mine", "--", "sh", "-c",
                    'id -un; echo "$HOME"; sudo -n id -u; cat /run/host/etc/hostname')
    assert result.returncode == 0, (result.stderr, session["log"].read_text()[-2000:])
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == [alice["name"], alice["home"], "0"]
    assert lines[3] == Path("/etc/hostname").read_text().strip()
    print(f"session mode: create + first run {time.monotonic() - started:.1f} s")
    assert boxctl(alice, session, "rm", "-f", "mine").returncode == 0
