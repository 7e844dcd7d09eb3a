"""Shared fixtures: the end-to-end test bed (real podman, real bus, real boxd) and real users."""

from __future__ import annotations

import json
import os
import shutil
import signal as signal_module
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bed
from boxd.paths import box_path

RUN_ROOT = Path(os.environ.get("BOXD_TEST_ROOT", "/var/tmp/boxd-test"))
RUN_DIR = Path("/run/boxd-test")


class Listener:
    """A running tests/bed/listen.py: signals seen so far, read as they come."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.seen: list[dict[str, object]] = []

    def _next(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the listener ended early"
        return json.loads(line)

    def until(self, member: str, first: str, timeout: float = 120) -> list[dict[str, object]]:
        """Read signals until `member` arrives with `first` as its first argument. After
        `timeout` the listener is told to finish (killing runuser would leave it running), and
        this fails."""
        assert self.proc.stdin is not None
        timer = threading.Timer(timeout, self.proc.stdin.close)
        timer.start()
        try:
            while True:
                signal = self._next()
                assert "done" not in signal, f"no {member} for {first} within {timeout} s"
                self.seen.append(signal)
                if signal["member"] == member and signal["first"] == first:
                    return self.seen
        finally:
            timer.cancel()

    def finish(self, timeout: float = 30) -> list[dict[str, object]]:
        """Everything boxd sent this listener up to now, then end it."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)  # closes its stdin: time to finish
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal_module.SIGKILL)
            raise
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines and lines[-1] == {"done": True}, lines
        self.seen.extend(lines[:-1])
        return self.seen


class Boxd:
    """The running bed, and ways to call the daemon as a given real user."""

    def __init__(self, podman: bed.Podman, bus: bed.Bus, daemon: bed.Daemon,
                 polkit: bed.Polkit) -> None:
        self.podman = podman
        self.bus = bus
        self.daemon = daemon
        self.polkit = polkit

    @property
    def address(self) -> str:
        return self.bus.address

    def call(self, path: str, interface: str, member: str, signature: str = "",
             args: list | None = None, user: str | None = None, repeat: int = 1) -> dict:
        """Call through the real bus as `user` (a real account) or root; returns body or error."""
        encoded = json.dumps(args or [])
        with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
            if len(encoded) > 65536:  # argv strings are capped at 128 KiB
                handle.write(encoded)
                handle.flush()
                os.chmod(handle.name, 0o644)
                encoded = "@" + handle.name
            argv = [sys.executable, "-", self.address, path, interface, member, signature,
                    encoded]
            if user is not None:
                argv = ["runuser", "-u", user, "--", *argv]
            script = (bed.REPO / "tests" / "bed" / "call.py").read_bytes()
            result = subprocess.run(argv, input=script, capture_output=True, timeout=300,
                                    env={**os.environ, "BOXD_CALL_REPEAT": str(repeat)})
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    def manager(self, member: str, signature: str = "", args: list | None = None,
                user: str | None = None, repeat: int = 1) -> dict:
        return self.call("/io/github/boxd1", "io.github.boxd1.Manager", member, signature, args,
                         user, repeat)

    def box(self, name: str, member: str, signature: str = "", args: list | None = None,
            user: str | None = None, repeat: int = 1) -> dict:
        return self.call(box_path(name), "io.github.boxd1.Box", member,
                         signature, args, user, repeat)

    def listen(self, user: str) -> Listener:
        """A process of `user` that collects boxd's signals (tests/bed/listen.py); returns once
        it is listening."""
        script = (bed.REPO / "tests" / "bed" / "listen.py").read_text()
        proc = subprocess.Popen(["runuser", "-u", user, "--", sys.executable, "-c", script,
                                 self.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                start_new_session=True)
        assert proc.stdout is not None
        assert b'"ready"' in proc.stdout.readline()
        return Listener(proc)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.daemon.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def busctl(self, *args: str, user: str | None = None, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        argv = ["busctl", f"--address={self.address}", *args]
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)

    def exec_in(self, box: str, command: str, uid: int | None = None, check: bool = True
                ) -> subprocess.CompletedProcess[bytes]:
        """Look inside a box with podman's own exec (test tooling, not boxd's data path)."""
        user = ["--user", str(uid)] if uid is not None else []
        return self.podman.cli("exec", *user, box, "sh", "-c", command, check=check)


@pytest.fixture(scope="session")
def boxd_bed() -> Iterator[Boxd]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (they run podman, a bus and boxd)")
    shutil.rmtree(RUN_ROOT, ignore_errors=True)
    podman = bed.Podman(RUN_ROOT / "podman", RUN_DIR)
    bus = bed.Bus(RUN_ROOT / "bus")
    polkit = bed.Polkit(bus.address)
    daemon = bed.Daemon(RUN_ROOT / "boxd", bus.address, podman.socket,
                        extra_config={"subid_base": 1_500_000_000})
    try:
        podman.start()
        podman.import_image(bed.ensure_rootfs("debian"), bed.DEBIAN_IMAGE)
        podman.import_image(bed.ensure_rootfs("busybox"), bed.BUSYBOX_IMAGE)
        bus.start()
        polkit.start()
        daemon.start()
        yield Boxd(podman, bus, daemon, polkit)
    finally:
        daemon_log = daemon.log_tail(60)
        daemon.stop()
        if podman.proc is not None:
            bed.remove_all_containers(podman)
        podman.stop()
        polkit.stop()
        bus.stop()
        print("\n--- boxd log tail ---\n" + daemon_log)


@pytest.fixture(scope="session")
def alice() -> dict:
    """A user in the group boxd: polkit (per polkit/50-io.github.boxd1.rules) lets her use boxd."""
    return bed.ensure_user("boxd-alice", 2101, groups=("boxd",))


@pytest.fixture(scope="session")
def bob() -> dict:
    return bed.ensure_user("boxd-bob", 2102, groups=("boxd",))


@pytest.fixture(scope="session")
def admin() -> dict:
    """A box administrator: member of boxd-admin."""
    return bed.ensure_user("boxd-admin1", 2103, groups=("boxd-admin",))


@pytest.fixture(scope="session")
def carol() -> dict:
    """A user outside boxd's groups, in no active local session: polkit says auth_admin."""
    return bed.ensure_user("boxd-carol", 2104)


@pytest.fixture(scope="session")
def alice_box(boxd_bed, alice) -> str:
    """A running box of alice's for session tests."""
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-sess", "", {}], user=alice["name"])
    assert "error" not in reply, reply
    assert boxd_bed.box("alice-sess", "Start", user=alice["name"]) == {"body": []}
    return "alice-sess"


def boxctl_argv(boxd: Boxd, user: str, *args: str) -> list[str]:
    """boxctl as a real user on the test bus."""
    return ["runuser", "-u", user, "--", "env", f"BOXD_BUS_ADDRESS={boxd.address}",
            str(Path(sys.executable).with_name("boxctl")), *args]


# -- on failure, what the daemon logged during the test ------------------------------------------
# CI shows only a failure's report: the daemon's own words about that moment belong in it.
_DAEMON_LOG = RUN_ROOT / "boxd" / "boxd.log"
_log_offset = pytest.StashKey[int]()


def _log_size() -> int:
    try:
        return _DAEMON_LOG.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_log_offset] = _log_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "boxd_bed" not in getattr(item, "fixturenames", ()):
        return
    try:
        with _DAEMON_LOG.open("rb") as log:
            log.seek(item.stash.get(_log_offset, 0))
            lines = log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return
    # The routine "call"/"authorization" lines would drown what matters.
    notable = [line for line in lines
               if '"call"' not in line and '"authorization"' not in line][-80:]
    if notable:
        report.sections.append(("boxd log during this test", "\n".join(notable)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests drive real podman, a real bus and real processes on a shared machine; a
    timing accident there must not sink a whole CI run, so each gets one retry. The retry is
    reported ("R" in the summary, "rerun" in -ra), so a test that only passes the second time is
    visible, and one that fails twice still fails. Unit tests get no retry."""
    retries = int(os.environ.get("BOXD_TEST_E2E_RERUNS", "1"))
    if retries <= 0:
        return
    for item in items:
        if "/tests/e2e/" in str(item.fspath) and not item.get_closest_marker("flaky"):
            item.add_marker(pytest.mark.flaky(reruns=retries, reruns_delay=2))
