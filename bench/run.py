"""boxd's benchmarks: boxd against the tools people use today, measured side by side in one run on
the same image and the same podman storage, reported as medians and ratios.

    sudo bench/run.sh            (installs podman-toolbox, distrobox and matplotlib, then runs this)

Baselines: `podman exec` (the floor boxd builds on), Toolbx's `toolbox run` (Debian's
podman-toolbox) and `distrobox enter` (Debian's distrobox). Distrobox runs as its users run it:
rootless, as the bench's unprivileged user on that user's own podman, with the same image content
(imported from the same tarball); where it cannot run, the report says why instead. Results go to
stdout as a table and to bench/results/latest.{json,md,png}, and the daemon's own footprint
(memory, idle CPU, ListBoxes latency with 100 boxes) below it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import bed  # noqa: E402  (the test bed: real podman, bus and daemon with test-owned config)
from bed.term import Terminal  # noqa: E402

ROOT = Path("/var/tmp/boxd-bench")
RESULTS = REPO / "bench" / "results"
BOX = "bench"
TOOLBOX = "bench-tbx"
DISTROBOX = "bench-dbx"


@dataclass
class Result:
    group: str
    tool: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Distrobox:
    """Distrobox as its users run it: rootless, as `user`, on that user's own podman. Its config
    goes in ~/.config/containers (the bed's runc, ulimits and vfs storage, as session mode's tests
    set it up), its storage under ROOT, and its image is imported from the bed's Debian tarball:
    the same content as the rootful boxes'."""

    user: dict[str, str | int]
    reason: str | None = "not set up"  # why it is not measured; None once it is ready

    @property
    def ready(self) -> bool:
        return self.reason is None

    @property
    def home(self) -> Path:
        return Path(str(self.user["home"]))

    @property
    def runtime(self) -> Path:
        return Path(f"/run/user/{self.user['uid']}")

    @property
    def storage(self) -> Path:
        return ROOT / "rootless"

    def argv(self, *command: str) -> list[str]:
        """`command` as the user, in a clean environment (none of the rootful podman's)."""
        name = str(self.user["name"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home), "USER": name,
               "LOGNAME": name, "SHELL": pwd.getpwnam(name).pw_shell,
               "XDG_RUNTIME_DIR": str(self.runtime), "DBX_CONTAINER_MANAGER": "podman"}
        return ["runuser", "-u", name, "--", "env", "-i",
                *[f"{key}={value}" for key, value in env.items()], *command]

    def podman(self, *args: str) -> list[str]:
        return self.argv("podman", *args)

    def create(self, name: str) -> list[str]:
        # --no-entry: no desktop entry (its icon download needs the internet; boxd makes none)
        return self.argv("distrobox", "create", "--yes", "--no-entry", "--image",
                         bed.DEBIAN_IMAGE, "--name", name)

    def enter(self, name: str, command: list[str]) -> list[str]:
        return self.argv("distrobox", "enter", name, "--", *command)

    def up(self) -> None:
        """Set up the user's podman and the bench's distrobox, through its first enter (which
        runs distrobox's init: on this image it apt-get installs its missing packages). On
        failure, `reason` says why."""
        if not shutil.which("distrobox"):
            self.reason = "distrobox is not installed (apt-get install distrobox)"
            return
        try:
            self._configure()
            with open(bed.ensure_rootfs("debian"), "rb") as tarball:
                self._call(self.podman("import", "-q", "-", bed.DEBIAN_IMAGE), stdin=tarball)
            self._call(self.create(DISTROBOX))
            self._call(self.enter(DISTROBOX, ["true"]), timeout=900)
        except subprocess.CalledProcessError as error:
            self.reason = (f"`{self._shown(error.cmd)}` exited with {error.returncode}: "
                           f"{_tail((error.stderr or b'') + (error.stdout or b''))}")
            self._add_init_log(error.cmd)
        except subprocess.TimeoutExpired as error:
            self.reason = f"`{self._shown(error.cmd)}` took over {error.timeout:.0f} s"
            self._add_init_log(error.cmd)
        except OSError as error:
            self.reason = str(error)
        else:
            self.reason = None

    def down(self) -> None:
        """Remove the user's containers in the bench's storage (distrobox's among them)."""
        if not (self.home / ".config" / "containers" / "storage.conf").exists():
            return
        try:
            subprocess.run(self.podman("rm", "--all", "--force", "--time", "0"),
                           capture_output=True, cwd="/", timeout=120)
        except (subprocess.TimeoutExpired, OSError):
            pass  # nothing more to do about it here; the next run's up() tries again

    def _configure(self) -> None:
        uid, gid = int(self.user["uid"]), int(self.user["gid"])
        if _ensure_subids(str(self.user["name"])):
            self._call(self.podman("system", "migrate"))  # a running pause process: new ranges
        for path in (self.runtime, self.storage):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
        self.runtime.chmod(0o700)
        config = self.home / ".config" / "containers"
        config.mkdir(parents=True, exist_ok=True)
        (config / "containers.conf").write_text(bed.CONTAINERS_CONF)
        (config / "storage.conf").write_text(
            bed.STORAGE_CONF.format(root=self.storage, run=self.runtime / "boxd-bench"))
        for path in (config.parent, config, *config.iterdir()):
            os.chown(path, uid, gid)

    def _add_init_log(self, argv: list[str]) -> None:
        """After a failed enter: the end of what distrobox's init printed (an apt-get error, say),
        without its shell trace, unless the enter's own output showed it already."""
        if "enter" not in argv or self.reason is None:
            return
        try:  # not --tail: podman 4.3 reverses the pieces of partial lines with it
            logs = subprocess.run(self.podman("logs", DISTROBOX), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, cwd="/", timeout=60).stdout
        except subprocess.TimeoutExpired:
            return
        log = _tail(b"\n".join(line for line in logs.splitlines() if not line.startswith(b"+")))
        if log not in self.reason:
            self.reason += f"; its init's log ends: {log}"

    def _shown(self, argv: list[str]) -> str:
        """`argv` without the runuser/env prefix of argv()."""
        prefix = self.argv()
        return shlex.join(argv[len(prefix):] if argv[:len(prefix)] == prefix else argv)

    def _call(self, argv: list[str], timeout: float = 300, **kwargs
              ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, check=True, capture_output=True, cwd="/", timeout=timeout,
                              **kwargs)


class Bench:
    def __init__(self, rounds: int, stream_mib: int) -> None:
        self.rounds = rounds
        self.stream_mib = stream_mib
        self.podman = bed.Podman(ROOT / "podman", Path("/run/boxd-bench"))
        self.bus = bed.Bus(ROOT / "bus")
        self.daemon = bed.Daemon(ROOT / "boxd", self.bus.address, self.podman.socket,
                                 extra_config={"log_level": "warning",
                                               "max_boxes_per_user": 200,
                                               "max_sessions_per_user": 200})
        self.footprint: list[tuple[str, str]] = []
        self.polkit = bed.Polkit(self.bus.address)
        self.user = bed.ensure_user("boxd-bench", 2201, groups=("boxd",))
        self.distrobox = Distrobox(self.user)
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.baselines = True  # set up Toolbx and Distrobox (groups that compare need them)

    # -- set-up --------------------------------------------------------------------------------
    def up(self) -> None:
        self.distrobox.down()  # a previous run's containers, before their storage goes
        shutil.rmtree(ROOT, ignore_errors=True)
        self.podman.start()
        self.podman.import_image(bed.ensure_rootfs("debian"), bed.DEBIAN_IMAGE)
        self.bus.start()
        self.polkit.start()
        self.daemon.start()
        self.boxctl("create", BOX)
        self.boxctl("start", BOX)
        if not self.baselines:
            self.distrobox.reason = "not needed by the groups run"
            return
        if shutil.which("toolbox"):
            self.run(["toolbox", "create", "--image", bed.DEBIAN_IMAGE, "-c", TOOLBOX])
            self.run(["toolbox", "run", "-c", TOOLBOX, "true"])
        self.distrobox.up()
        if not self.distrobox.ready:
            self.note(f"distrobox: not measured: {self.distrobox.reason}")

    def down(self) -> None:
        self.distrobox.down()
        self.daemon.stop()
        bed.remove_all_containers(self.podman)
        self.podman.stop()
        self.polkit.stop()
        self.bus.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**self.podman.env, "BOXD_BUS_ADDRESS": self.bus.address}

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(argv, env=self.env, capture_output=True, cwd="/", **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: "
                               f"{result.stderr.decode(errors='replace').strip()[-400:]}")
        return result

    def note(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self.notes.append(line)

    def boxctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        boxctl = str(Path(sys.executable).with_name("boxctl"))
        return self.run(["runuser", "-u", self.user["name"], "--", "env",
                         f"BOXD_BUS_ADDRESS={self.bus.address}", boxctl, *args])

    # -- measurements --------------------------------------------------------------------------
    def tools_for(self, command: list[str]) -> dict[str, list[str]]:
        boxctl = str(Path(sys.executable).with_name("boxctl"))
        tools = {
            "boxctl run": [boxctl, "run", BOX, "--", *command],
            "podman exec": ["podman", "exec", "--user", str(self.user["uid"]), BOX, *command],
        }
        if shutil.which("toolbox"):
            tools["toolbox run"] = ["toolbox", "run", "-c", TOOLBOX, *command]
        if self.distrobox.ready:  # rootless, as the user: runuser adds ~8 ms here
            tools["distrobox enter"] = self.distrobox.enter(DISTROBOX, command)
        return tools

    def timed(self, group: str, unit: str, tools: dict[str, list[str]], rounds: int,
              measure: Callable[[list[str]], float]) -> None:
        results = {name: Result(group, name, unit) for name in tools}
        for argv in tools.values():  # one warm-up each
            measure(argv)
        for _ in range(rounds):  # interleaved, so drift hits every tool alike
            for name, argv in tools.items():
                results[name].samples.append(measure(argv))
        self.results.extend(results.values())

    def wall(self, argv: list[str]) -> float:
        """Seconds `argv` takes; its stderr (distrobox's progress lines) is shown only if it
        fails."""
        started = time.perf_counter()
        result = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited with {result.returncode}: "
                               f"{_tail(result.stderr)}")
        return elapsed

    def warm_run(self) -> None:
        self.timed("warm run: true", "s", self.tools_for(["true"]), self.rounds, self.wall)

    def stream(self) -> None:
        payload = ROOT / "stream.bin"
        with open(payload, "wb") as handle:
            for _ in range(self.stream_mib):
                handle.write(os.urandom(1 << 20))
        size = payload.stat().st_size
        tools = self.tools_for(["cat"])
        tools.pop("toolbox run", None)  # toolbox run has no stdin-only mode worth comparing
        tools.pop("distrobox enter", None)  # issue 7 compares distrobox on entering only
        tools["podman exec"].insert(2, "-i")

        def throughput(argv: list[str]) -> float:
            started = time.perf_counter()
            with open(payload, "rb") as source:
                proc = subprocess.Popen(argv, env=self.env, stdin=source, stdout=subprocess.PIPE,
                                        cwd="/")
                received = 0
                while chunk := proc.stdout.read(1 << 20):
                    received += len(chunk)
                proc.wait()
            elapsed = time.perf_counter() - started
            if received != size:
                raise RuntimeError(f"{argv[0]} passed {received} of {size} bytes")
            return size / (1 << 20) / elapsed

        self.timed(f"stream {self.stream_mib} MiB through cat", "MiB/s", tools, 3, throughput)

    def cold_run(self) -> None:
        """The box is stopped: boxd starts it and waits for its entry point; podman needs a start
        then an exec; toolbox and distrobox start their container themselves (distrobox waits
        for its init to run again)."""
        uid = str(self.user["uid"])
        # The shared box is stopped through boxd (not timed), which first lets go of its warm
        # execs: podman refuses to stop a container with exec sessions still being booked.
        stop_box = [str(Path(sys.executable).with_name("boxctl")), "stop", BOX]
        tools = {
            "boxctl run": (stop_box, self.tools_for(["true"])["boxctl run"]),
            "podman exec": (stop_box,
                            ["sh", "-c", f"podman start {BOX} >/dev/null && "
                                         f"podman exec --user {uid} {BOX} true"]),
        }
        if shutil.which("toolbox"):
            tools["toolbox run"] = (["podman", "stop", "-t", "0", TOOLBOX],
                                    ["toolbox", "run", "-c", TOOLBOX, "true"])
        if self.distrobox.ready:
            tools["distrobox enter"] = (self.distrobox.podman("stop", "-t", "0", DISTROBOX),
                                        self.distrobox.enter(DISTROBOX, ["true"]))
        results = {name: Result("cold run: true", name, "s") for name in tools}
        for _ in range(max(3, self.rounds // 6)):
            for name, (stop, argv) in tools.items():
                self.run(stop)
                results[name].samples.append(self.wall(argv))
        self.results.extend(results.values())

    def create_and_start(self) -> None:
        """A new box to the first command in it, per tool; removed after."""
        tools: dict[str, Callable[[str], float]] = {"boxctl run": self._create_boxctl,
                                                    "podman exec": self._create_podman}
        if shutil.which("toolbox"):
            tools["toolbox run"] = self._create_toolbox
        if self.distrobox.ready:
            tools["distrobox enter"] = self._create_distrobox
        results = {name: Result("create + first run", name, "s") for name in tools}
        for i in range(3):
            for name, create in tools.items():
                results[name].samples.append(create(f"cs{i}"))
        self.results.extend(results.values())

    def _create_boxctl(self, name: str) -> float:
        started = time.perf_counter()
        self.boxctl("create", name)
        self.boxctl("run", name, "--", "true")
        elapsed = time.perf_counter() - started
        self.boxctl("rm", "-f", name)
        return elapsed

    def _create_podman(self, name: str) -> float:
        started = time.perf_counter()  # a plain container: no user namespace, no set-up
        self.run(["podman", "run", "-d", "--name", name, bed.DEBIAN_IMAGE, "sleep", "inf"])
        self.run(["podman", "exec", name, "true"])
        elapsed = time.perf_counter() - started
        self.run(["podman", "rm", "-f", "-t", "0", name])
        return elapsed

    def _create_toolbox(self, name: str) -> float:
        started = time.perf_counter()
        self.run(["toolbox", "create", "--image", bed.DEBIAN_IMAGE, "-c", name])
        self.run(["toolbox", "run", "-c", name, "true"])
        elapsed = time.perf_counter() - started
        self.run(["podman", "rm", "-f", "-t", "0", name])
        return elapsed

    def _create_distrobox(self, name: str) -> float:
        """Its first enter runs distrobox's init, which apt-get installs what it misses."""
        started = time.perf_counter()
        self.run(self.distrobox.create(name))
        self.run(self.distrobox.enter(name, ["true"]))
        elapsed = time.perf_counter() - started
        self.run(self.distrobox.podman("rm", "-f", "-t", "0", name))
        return elapsed

    def concurrent(self, count: int = 50) -> None:
        """`count` boxctl runs at once: latency of each, and failures."""
        argv = self.tools_for(["sh", "-c", "echo ok"])["boxctl run"]

        def one() -> tuple[float, bool]:
            started = time.perf_counter()
            result = subprocess.run(argv, env=self.env, capture_output=True, cwd="/")
            ok = result.stdout == b"ok\n" and result.returncode == 0
            if not ok:
                why.append(f"exit {result.returncode}, stdout {result.stdout[:60]!r}, "
                           f"stderr {result.stderr.decode(errors='replace').strip()[-200:]!r}")
            return time.perf_counter() - started, ok

        why: list[str] = []
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda _: one(), range(count)))
        result = Result(f"{count} concurrent runs", "boxctl run", "s",
                        [t for t, _ in outcomes])
        self.results.append(result)
        failures = sum(1 for _, ok in outcomes if not ok)
        self.footprint.append((f"{count} concurrent boxctl runs: failures", str(failures)))
        for reason in sorted(set(why))[:3]:
            self.footprint.append(("a failure", reason))

    def keystroke(self, samples: int = 200) -> None:
        """Echo round trip of one key through `cat` on a terminal."""
        boxctl = str(Path(sys.executable).with_name("boxctl"))
        # "ready" comes only from the box: once it shows, the client has its terminal in raw
        # mode, and every echo measured is the box's, not the local terminal's.
        command = ["sh", "-c", "echo re''ady; exec cat"]
        tools = {"boxctl run": [boxctl, "run", BOX, "--", *command],
                 "podman exec": ["podman", "exec", "-it", "--user", str(self.user["uid"]), BOX,
                                 *command]}
        for name, argv in tools.items():
            term = Terminal(argv, env=self.env)
            try:
                term.read_until("ready")
                result = Result("keystroke echo (pty)", name, "s")
                for i in range(samples):
                    key = "abcdefghijklmnopqrstuvwxyz"[i % 26]
                    started = time.perf_counter()
                    term.send(key)
                    term.read_until(key)
                    result.samples.append(time.perf_counter() - started)
                self.results.append(result)
            finally:
                term.close()

    def daemon_footprint(self, boxes: int = 100, sessions: int = 50) -> None:
        pid = self.daemon.proc.pid
        self.footprint.append(("daemon RSS, idle, 1 box", f"{_rss_mib(pid):.1f} MiB"))
        self._memory_after_load()
        self.podman.import_image(bed.ensure_rootfs("busybox"), bed.BUSYBOX_IMAGE)
        for i in range(boxes):
            self.run(["busctl", f"--address={self.bus.address}", "call", "io.github.boxd1",
                      "/io/github/boxd1", "io.github.boxd1.Manager", "CreateBox", "ssa{sv}",
                      f"many{i}", bed.BUSYBOX_IMAGE, "0"])
        sleepers = [subprocess.Popen(self.tools_for(["sleep", "120"])["boxctl run"],
                                     env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, cwd="/")
                    for _ in range(sessions)]
        time.sleep(5)
        self.footprint.append((f"daemon RSS, {boxes + 1} boxes, {sessions} open sessions",
                               f"{_rss_mib(pid):.1f} MiB"))
        listing = Result(f"ListBoxes, {boxes + 1} boxes", "boxd", "s")
        for _ in range(30):
            started = time.perf_counter()
            self.run(["busctl", f"--address={self.bus.address}", "call", "io.github.boxd1",
                      "/io/github/boxd1", "io.github.boxd1.Manager", "ListBoxes"])
            listing.samples.append(time.perf_counter() - started)
        self.footprint.append((listing.group + " (busctl, median)", _fmt(listing.median, "s")))
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
        time.sleep(5)
        before = _cpu_seconds(pid)
        time.sleep(60)
        self.footprint.append(("daemon CPU while idle for 60 s",
                               f"{(_cpu_seconds(pid) - before) * 1000:.0f} ms"))
        self.footprint.append(("daemon RSS after sessions ended", f"{_rss_mib(pid):.1f} MiB"))
        self._dead_server_noticed()

    def _load_sessions(self, count: int, at_once: int, size: int) -> tuple[float, list[str]]:
        """`count` sessions through boxd, `at_once` at a time, each printing `size` bytes to a
        pipe, each a client of its own (tests/bed/sessions_load.py): seconds they took, and why
        the first few failed."""
        from boxd.paths import box_path

        script = (REPO / "tests" / "bed" / "sessions_load.py").read_bytes()
        started = time.perf_counter()
        result = subprocess.run(
            ["runuser", "-u", str(self.user["name"]), "--", sys.executable, "-",
             self.bus.address, box_path(BOX), str(count), str(at_once), str(size)],
            input=script, capture_output=True, cwd="/", timeout=1800)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"sessions_load exited with {result.returncode}: "
                               f"{_tail(result.stderr)}")
        outcome = json.loads(result.stdout)
        if outcome["ok"] == count:
            return elapsed, []
        return elapsed, [f"{count - outcome['ok']} of {count}", *outcome["failures"][:2]]

    def _memory_after_load(self, count: int = 500, at_once: int = 100,
                           size: int = 4 << 20) -> None:
        """Issue 12's load (500 sessions of 4 MiB; 100 at once: more new clients at once make
        boxd's polkit checks exceed the bus's 128 pending replies per connection): the daemon's
        RSS before, right after, and once the burst is over."""
        pid = self.daemon.proc.pid
        self._load_sessions(2 * 20, 20, size)  # warm-up: imports, caches, warm execs
        time.sleep(5)  # boxd trims its heap 2 s after a burst
        idle = _rss_mib(pid)
        elapsed, failed = self._load_sessions(count, at_once, size)
        loaded = _rss_mib(pid)
        time.sleep(5)
        after = _rss_mib(pid)
        what = f"{count} sessions of {size >> 20} MiB, {at_once} at once"
        self.footprint += [
            ("daemon RSS, idle after a warm-up", f"{idle:.1f} MiB"),
            (f"daemon RSS right after {what} ({elapsed:.0f} s)", f"{loaded:.1f} MiB"),
            ("daemon RSS 5 s after they ended", f"{after:.1f} MiB ({after - idle:+.1f})")]
        self.footprint += [("sessions that failed", reason) for reason in failed]

    def _dead_server_noticed(self, rounds: int = 3) -> None:
        """A client waiting on a session (`sleep 100`) when its server is SIGKILLed: how long
        until it exits. boxctl run and boxd, side by side with podman exec (the remote client)
        and podman's REST service. Both servers are started again after each kill."""
        command = ["sh", "-c", "echo ready; exec sleep 100"]
        boxctl = self.tools_for(command)["boxctl run"]
        remote = ["podman", "--url", f"unix://{self.podman.socket}", "exec",
                  "--user", str(self.user["uid"]), BOX, *command]
        results = {"boxctl run": Result("client notices its server SIGKILLed", "boxctl run",
                                         "s"),
                   "podman exec": Result("client notices its server SIGKILLed", "podman exec",
                                         "s")}
        said: dict[str, str] = {}
        for _ in range(rounds):
            for tool, argv, kill in (("boxctl run", boxctl, self._kill_daemon),
                                     ("podman exec", remote, self._kill_podman)):
                proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
                try:
                    if proc.stdout.readline() != b"ready\n":
                        raise RuntimeError(f"{tool}: the session did not start")
                    started = time.perf_counter()
                    restart = kill()
                    proc.wait(300)
                    results[tool].samples.append(time.perf_counter() - started)
                    said[tool] = (f"exit {proc.returncode}: "
                                  f"{_tail(proc.stderr.read(), 1) if proc.stderr else ''}")
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                restart()
                self._end_sleepers()
        self.results.extend(results.values())
        for tool, words in said.items():
            self.footprint.append((f"{tool} after its server's SIGKILL", words))

    def _kill_daemon(self) -> Callable[[], None]:
        assert self.daemon.proc is not None
        self.daemon.proc.kill()

        def restart() -> None:
            assert self.daemon.proc is not None
            self.daemon.proc.wait()
            self.daemon.proc = None
            self.daemon.start()

        return restart

    def _kill_podman(self) -> Callable[[], None]:
        assert self.podman.proc is not None
        self.podman.proc.kill()

        def restart() -> None:
            assert self.podman.proc is not None
            self.podman.proc.wait()
            self.podman.proc = None
            if os.path.exists(self.podman.socket):
                os.unlink(self.podman.socket)
            self.podman.start()
            # boxd finds podman again on its own: wait for a session to work before going on
            bed.wait_for(lambda: subprocess.run(
                self.tools_for(["true"])["boxctl run"], env=self.env, capture_output=True,
                cwd="/").returncode == 0, 60, "boxd to use podman again")

        return restart

    def _end_sleepers(self) -> None:
        """End the `sleep 100`s left in the bench's box by killed servers: only processes of
        that box's own exec sessions (the box shares the host's pid namespace)."""
        import signal

        info = json.loads(bed._curl(self.podman.socket, f"/containers/{BOX}/json"))
        for exec_id in info.get("ExecIDs") or []:
            try:
                pid = int(json.loads(bed._curl(self.podman.socket,
                                               f"/exec/{exec_id}/json")).get("Pid") or 0)
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    if pid > 1 and cmdline.read() == b"sleep\x00100\x00":
                        os.kill(pid, signal.SIGKILL)
            except (subprocess.CalledProcessError, ValueError, OSError):
                continue  # gone already

    def hostile(self, calls: int = 5000, flood_seconds: float = 20) -> None:
        """Issue 11's hostile user (tests/bed/hostile.py, as a second unprivileged user): the
        daemon's open fds before and after `calls` fd-carrying calls down every path; the bench
        user's ListBoxes latency while the hostile user sends the largest messages the bus
        takes to every method; the longest event-loop stall the daemon logged meanwhile."""
        enemy = bed.ensure_user("boxd-bench-hostile", 2202, groups=("boxd",))
        script = (REPO / "tests" / "bed" / "hostile.py").read_bytes()

        def argv(user: dict, *args: str) -> list[str]:
            return ["runuser", "-u", str(user["name"]), "--", sys.executable, "-",
                    self.bus.address, *args]

        def fds() -> int:
            return len(os.listdir(f"/proc/{self.daemon.proc.pid}/fd"))

        stalls_before = len(self.daemon.log_events("loop_stall"))
        self.run(argv(enemy, "fds", "300"), input=script)  # warm-up: polkit, caches
        before = fds()
        started = time.perf_counter()
        self.run(argv(enemy, "fds", str(calls)), input=script)
        elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while fds() > before and time.monotonic() < deadline:
            time.sleep(0.2)
        self.footprint.append((f"daemon open fds before / after {calls} fd-carrying calls "
                               f"down every path ({elapsed:.1f} s)", f"{before} / {fds()}"))
        flood = subprocess.Popen(argv(enemy, "flood", str(flood_seconds)), env=self.env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
        try:
            flood.stdin.write(script)
            flood.stdin.close()
            if flood.stdout.readline() != b"flooding\n":
                raise RuntimeError("the hostile flood did not start")
            time.sleep(1)
            probe = self.run(argv(self.user, "probe", "60"), input=script)
            flooded = json.loads(flood.stdout.read().splitlines()[-1])
            flood.wait(60)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        latencies = json.loads(probe.stdout.splitlines()[-1])["latencies"]
        self.results.append(Result("ListBoxes while another user floods", "boxd", "s",
                                   latencies))
        self.footprint.append(("hostile flood: messages / MiB sent to boxd",
                               f"{flooded['sent']} / {flooded['bytes'] / 2**20:.0f}"))
        stalls = [e["stall_ms"] for e in self.daemon.log_events("loop_stall")[stalls_before:]]
        self.footprint.append(("longest event-loop stall while hostile input flows",
                               f"{max(stalls):.0f} ms ({len(stalls)} over 50 ms)" if stalls
                               else "none over 50 ms"))

    # -- report --------------------------------------------------------------------------------
    def table(self) -> str:
        lines = ["| benchmark | tool | median | p95 | vs podman exec |",
                 "| --- | --- | ---: | ---: | ---: |"]
        for group in dict.fromkeys(r.group for r in self.results):
            rows = [r for r in self.results if r.group == group]
            base = next((r for r in rows if r.tool == "podman exec"), None)
            for r in rows:
                ratio = f"{r.median / base.median:.2f}x" if base else "-"
                lines.append(f"| {group} | {r.tool} | {_fmt(r.median, r.unit)} | "
                             f"{_fmt(r.p95, r.unit)} | {ratio} |")
        if self.footprint:
            lines += ["", "| daemon footprint | value |", "| --- | ---: |"]
            lines += [f"| {what} | {value} |" for what, value in self.footprint]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """Medians relative to podman exec (time: lower is better; MiB/s: higher is better)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
            return
        groups = [g for g in dict.fromkeys(r.group for r in self.results)
                  if any(r.tool == "podman exec" for r in self.results if r.group == g)]
        tools = list(dict.fromkeys(r.tool for r in self.results if r.group in groups))
        if not tools:
            return  # only groups without a podman exec baseline were run
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(tools)
        for t, tool in enumerate(tools):
            ratios = []
            for group in groups:
                rows = {r.tool: r for r in self.results if r.group == group}
                ratios.append(rows[tool].median / rows["podman exec"].median
                              if tool in rows else 0)
            ax.bar([g + t * width for g in range(len(groups))], ratios, width, label=tool)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks([g + width * (len(tools) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_ylabel("median / podman exec's")
        rivals = " vs ".join(tool for tool in tools if tool != "boxctl run")
        ax.set_title(f"boxd vs {rivals} (time: lower is better; MiB/s: higher)", fontsize=10)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    def save(self) -> None:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(
            [{"group": r.group, "tool": r.tool, "unit": r.unit, "median": r.median,
              "p95": r.p95, "samples": r.samples} for r in self.results], indent=2))
        (RESULTS / "latest.md").write_text(self.table() + "\n")
        self.plot(RESULTS / "latest.png")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ensure_subids(name: str) -> bool:
    """Subordinate uid and gid ranges for `name` (its rootless podman's user namespace), each
    added after the last range in use if missing; whether any was added."""
    added = False
    for path, option in ((Path("/etc/subuid"), "--add-subuids"),
                         (Path("/etc/subgid"), "--add-subgids")):
        ranges = [line.split(":") for line in
                  (path.read_text().splitlines() if path.exists() else [])
                  if line.count(":") == 2]
        if any(owner == name for owner, _, _ in ranges):
            continue
        start = max([100000, *(int(first) + int(count) for _, first, count in ranges)])
        subprocess.run(["usermod", option, f"{start}-{start + 65535}", name], check=True,
                       capture_output=True)
        added = True
    return added


def _tail(output: bytes, lines: int = 3) -> str:
    """The last `lines` non-blank lines of `output` on one line, without terminal colours."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output.decode(errors="replace"))
    text = [" ".join(line.split())[:200] for line in plain.splitlines() if line.strip()]
    return " / ".join(text[-lines:]) or "(no output)"


def _fmt(value: float, unit: str) -> str:
    if unit != "s":
        return f"{value:.0f} {unit}"
    return f"{value * 1e6:.0f} µs" if value < 0.001 else f"{value * 1000:.1f} ms"


# In the order a full run takes them.
GROUPS = {"warm": "warm_run", "stream": "stream", "cold": "cold_run",
          "create": "create_and_start", "concurrent": "concurrent", "keystroke": "keystroke",
          "footprint": "daemon_footprint", "hostile": "hostile"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="samples per tool (warm run)")
    parser.add_argument("--stream-mib", type=int, default=256, help="MiB for the stream test")
    parser.add_argument("--quick", action="store_true",
                        help="only warm runs and the stream (issue 3's pair)")
    parser.add_argument("--only", action="append", choices=list(GROUPS), default=[],
                        help="run only this group (repeatable)")
    args = parser.parse_args()
    bench = Bench(args.rounds, args.stream_mib)
    groups = args.only or (["warm", "stream"] if args.quick else list(GROUPS))
    bench.baselines = not set(groups) <= {"hostile"}
    try:
        bench.up()
        for group in groups:
            getattr(bench, GROUPS[group])()
    finally:
        bench.down()
    bench.save()
    print(bench.table())


if __name__ == "__main__":
    main()
