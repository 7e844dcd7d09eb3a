"""The test bed: real podman (REST service), a real private system-like bus, the real boxd daemon.

Everything it runs is test-owned: its own podman config, storage and socket, its own bus address
and policy dir, its own boxd state dir. Base images are built from Debian packages (no registry)
and cached between runs on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("BOXD_TEST_CACHE", "/var/cache/boxd-test"))
DEBIAN_IMAGE = "localhost/boxd-debian:12"
BUSYBOX_IMAGE = "localhost/boxd-busybox:latest"

CONTAINERS_CONF = """\
[containers]
# These machines lack CAP_SYS_RESOURCE: podman's default ulimits would be above the session's.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
# crun refuses the hybrid cgroup layout here; runc works.
runtime = "runc"
"""

STORAGE_CONF = """\
[storage]
# Rootful boxes with a uid map need vfs here: overlay's idmapped layer mount fails on these VMs.
driver = "vfs"
graphroot = "{root}/storage"
runroot = "{run}/runroot"
"""


REGISTRIES_CONF = """\
# The tests' registry on loopback (and its throttling proxy) speak plain HTTP.
[[registry]]
location = "127.0.0.1:5055"
insecure = true
[[registry]]
location = "127.0.0.1:5056"
insecure = true
[[registry]]
location = "127.0.0.1:5057"
insecure = true
"""


def ensure_rootfs(kind: str) -> Path:
    """A cached rootfs tarball built by boxd/data/build-rootfs.sh (debian ~30 s, busybox at
    once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{kind}.tar"
    if not tarball.exists():
        subprocess.run(["sh", str(REPO / "boxd" / "data" / "build-rootfs.sh"), kind,
                        str(tarball)], check=True, stdout=subprocess.DEVNULL)
    return tarball


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _curl(socket: str, path: str, method: str = "GET", data_file: Path | None = None,
          max_time: float = 0) -> bytes:
    cmd = ["curl", "-sf", "-m", str(max_time), "--unix-socket", socket, "-X", method,
           f"http://d/v4.0.0/libpod{path}"]
    if data_file is not None:
        cmd += ["-H", "Content-Type: application/x-tar", "--data-binary", f"@{data_file}"]
    return subprocess.run(cmd, check=True, capture_output=True).stdout


@dataclass
class Podman:
    root: Path
    run: Path
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.run / "podman.sock")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf")}

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        (self.root / "containers.conf").write_text(CONTAINERS_CONF)
        (self.root / "storage.conf").write_text(STORAGE_CONF.format(root=self.root, run=self.run))
        (self.root / "registries.conf").write_text(REGISTRIES_CONF)
        _ensure_mqueue()
        log = open(self.root / "service.log", "ab")
        self.proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env, stdout=log, stderr=log, start_new_session=True)
        wait_for(self.ping, 30, "podman's REST service")

    def ping(self) -> bool:
        try:
            return _curl(self.socket, "/_ping", max_time=10) == b"OK"
        except subprocess.CalledProcessError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def signal(self, signum: int) -> None:
        """Signal the bed's own podman service process (SIGSTOP/SIGCONT freeze and thaw it;
        the boxes' conmon processes are not its to freeze)."""
        assert self.proc is not None and self.proc.poll() is None, "podman's service is not up"
        os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the service process, as a crash would; the socket file stays behind."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen one too
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def ensure_running(self) -> None:
        """After a test froze or killed the service: thaw it, or start it again."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            wait_for(self.ping, 60, "podman's REST service to answer again", interval=0.2)
            return
        self.proc = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.start()

    def import_image(self, tarball: Path, reference: str) -> None:
        if not self.image_exists(reference):
            query = urllib.parse.urlencode({"reference": reference})
            _curl(self.socket, f"/images/import?{query}", "POST", tarball)

    def image_exists(self, reference: str) -> bool:
        try:
            _curl(self.socket, f"/images/{reference}/exists")
            return True
        except subprocess.CalledProcessError:
            return False

    def cli(self, *args: str, check: bool = True, input: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        """The podman CLI as a remote client of this service: for tests to look inside boxes."""
        return subprocess.run(["podman", "--url", f"unix://{self.socket}", *args],
                              env=self.env, capture_output=True, check=check, input=input,
                              timeout=120)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """The podman CLI on this service's storage, as a local client (for test set-up)."""
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, check=True,
                              timeout=300)

    def inspect(self, name: str) -> dict:
        return json.loads(_curl(self.socket, f"/containers/{name}/json"))

    def running_execs(self, name: str) -> list[str]:
        """The container's exec sessions whose process runs (podman lists ended ones too)."""
        running = []
        for exec_id in self.inspect(name).get("ExecIDs") or []:
            try:
                if json.loads(_curl(self.socket, f"/exec/{exec_id}/json")).get("Running"):
                    running.append(exec_id)
            except subprocess.CalledProcessError:
                pass  # gone meanwhile
        return running

    def inspect_image(self, reference: str) -> dict:
        return json.loads(_curl(self.socket, f"/images/{reference}/json"))


def _ensure_mqueue() -> None:
    with open("/proc/mounts") as mounts:
        if any(line.split()[1] == "/dev/mqueue" for line in mounts):
            return
    os.makedirs("/dev/mqueue", exist_ok=True)
    subprocess.run(["mount", "-t", "mqueue", "mqueue", "/dev/mqueue"], check=False)


@dataclass
class Bus:
    root: Path
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"unix:path={self.root / 'bus.sock'}"

    def start(self) -> None:
        policy_dir = self.root / "policy.d"
        policy_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "dbus" / "io.github.boxd1.conf", policy_dir)
        polkit_policy = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
        if polkit_policy.exists():
            shutil.copy(polkit_policy, policy_dir)
        template = (REPO / "tests" / "bed" / "bus.conf.in").read_text()
        config = self.root / "bus.conf"
        config.write_text(template.replace("@ADDRESS@", self.address)
                          .replace("@POLICY_DIR@", str(policy_dir)))
        self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork",
                                      "--nopidfile"], start_new_session=True)
        wait_for(lambda: (self.root / "bus.sock").exists(), 10, "dbus-daemon")
        os.chmod(self.root, 0o755)  # unprivileged test users must reach the socket

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


POLKITD = "/usr/lib/polkit-1/polkitd"


@dataclass
class Polkit:
    """The real polkitd on the test bus, with boxd's shipped actions and rules installed where
    polkitd reads them (it has no option for other directories)."""

    bus_address: str
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.copy(REPO / "polkit" / "io.github.boxd1.policy", "/usr/share/polkit-1/actions/")
        shutil.copy(REPO / "polkit" / "50-io.github.boxd1.rules", "/usr/share/polkit-1/rules.d/")
        self.proc = subprocess.Popen(
            [POLKITD, "--no-debug"],  # started as root, it switches to its own user
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self._owns_name, 20, "polkitd to own org.freedesktop.PolicyKit1")

    def _owns_name(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"polkitd exited with {self.proc.returncode}")
        return subprocess.run(["busctl", f"--address={self.bus_address}", "status",
                               "org.freedesktop.PolicyKit1"], capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


# Runs in a mount namespace of its own, then execs the daemon (the pid stays the daemon's):
# ProtectSystem=strict and ProtectHome=read-only (every mount read-only but the API file systems,
# the state dir and ReadWritePaths=), ProtectProc=invisible and ProcSubset=pid (a procfs of its
# own that shows no one else's processes).
_UNIT_MOUNTS = r"""
set -eu
writable=$1; shift
for path in $writable; do
    [ -e "$path" ] && mount --bind "$path" "$path"
done
findmnt -rno TARGET | sort -r | while read -r target; do
    case "$target" in
    /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue ;;
    esac
    case " $writable " in *" $target "*) continue ;; esac
    mount -o remount,bind,ro "$target" || echo "unit-mounts: $target stays writable" >&2
done
mount -t proc -o hidepid=invisible,subset=pid proc /proc
exec "$@"
"""


UNIT = REPO / "systemd" / "boxd.service"


def unit_setting(key: str) -> str:
    """The value of `key=` in boxd.service, which must set it exactly once."""
    import re

    found = re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.M)
    assert len(found) == 1, key
    return found[0]


def unit_sandbox(state_dir: Path) -> list[str]:
    """What BOXD_TEST_UNIT_SANDBOX=1 starts the suite's daemon under: as much of boxd.service's
    sandbox as works without systemd. CapabilityBoundingSet= and NoNewPrivileges= (setpriv),
    the file system and /proc views above and PrivateNetwork= (unshare: a network namespace with
    nothing in it; sockets by path still work). Building the default image needs more, as under
    the unit."""
    assert unit_setting("NoNewPrivileges") == "yes" and unit_setting("ProtectSystem") == "strict"
    assert unit_setting("ProtectHome") == "read-only" and unit_setting("ProtectProc") == "invisible"
    assert unit_setting("ProcSubset") == "pid" and unit_setting("PrivateNetwork") == "yes"
    wanted = ",".join("+" + c.removeprefix("CAP_").lower()
                      for c in unit_setting("CapabilityBoundingSet").split())
    writable = " ".join([str(state_dir), *unit_setting("ReadWritePaths").split()])
    return ["unshare", "--mount", "--propagation", "slave", "--net", "--",
            "sh", "-c", _UNIT_MOUNTS,
            "unit-mounts", writable,
            "setpriv", f"--bounding-set=-all,{wanted}", "--no-new-privs", "--"]


@dataclass
class Daemon:
    root: Path
    bus_address: str
    podman_socket: str
    extra_config: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "boxd.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "boxd.log"

    def start(self) -> None:
        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        config = {"podman_socket": self.podman_socket, "state_dir": str(self.root / "state"),
                  "bus_address": self.bus_address, "default_image": DEBIAN_IMAGE,
                  "log_format": "json", "log_level": "debug", "start_timeout": 60.0,
                  **self.extra_config}
        self.config_path.write_text(yaml.safe_dump(config))
        log = open(self.log_path, "ab")
        # As boxd.service's ExecStartPre=+: box owners' id ranges into /etc/subuid, /etc/subgid.
        subprocess.run([sys.executable, "-m", "boxd.daemon", "--register-subids", "--config",
                        str(self.config_path)], stdout=log, stderr=log, check=True, cwd="/",
                       timeout=120)
        argv = [sys.executable, "-m", "boxd.daemon", "--config", str(self.config_path)]
        if os.environ.get("BOXD_TEST_UNIT_SANDBOX") == "1":
            state = self.root / "state"
            state.mkdir(parents=True, exist_ok=True)
            argv = unit_sandbox(state) + argv
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                     start_new_session=True, cwd="/")  # the installed boxd
        wait_for(self._owns_name, 20, "boxd to own io.github.boxd1")

    def _owns_name(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"boxd exited with {self.proc.returncode}:\n{self.log_tail()}")
        result = subprocess.run(["busctl", f"--address={self.bus_address}", "status",
                                 "io.github.boxd1"], capture_output=True)
        return result.returncode == 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_events(self, event: str) -> list[dict]:
        """The daemon's structured log entries named `event`, oldest first."""
        import json

        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a traceback's lines
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
        return found

    def kill(self, signum: int = signal.SIGKILL, timeout: float = 30) -> int:
        """Send the daemon this bed started `signum` and wait for it to end (its pid is the
        daemon's own, sandbox or not); returns its exit status. start() brings it back."""
        assert self.proc is not None and self.proc.poll() is None, "boxd is not running"
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None if self.proc.poll() is not None else self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def ensure_user(name: str, uid: int, groups: tuple[str, ...] = (),
                shell: str = "/bin/bash") -> dict[str, str | int]:
    """A real unprivileged host user with a home, created if missing, in exactly `groups`
    (besides its own)."""
    import pwd

    for group in groups:
        subprocess.run(["groupadd", "-f", group], check=True)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        taken = any(e.pw_uid == uid for e in pwd.getpwall())
        subprocess.run(["useradd", "--create-home", *([] if taken else ["--uid", str(uid)]),
                        "--user-group", "--shell", shell, name], check=True)
        entry = pwd.getpwnam(name)
    subprocess.run(["usermod", "-G", ",".join(groups), name], check=True)
    return {"name": name, "uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir}


def remove_all_containers(podman: Podman) -> None:
    podman.cli("rm", "--all", "--force", "--time", "0", check=False)
