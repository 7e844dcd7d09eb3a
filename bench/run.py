"""boxd's benchmarks: boxd against the tools people use today, measured side by side in one run on
the same image and the same podman storage, reported as medians and ratios.

    sudo bench/run.sh            (installs podman-toolbox and matplotlib, then runs this)

Baselines: `podman exec` (the floor boxd builds on) and Toolbx's `toolbox run` (Debian's
podman-toolbox). Results go to stdout as a table and to bench/results/latest.{json,md,png}, and
the daemon's own footprint (memory, idle CPU, ListBoxes latency with 100 boxes) below it.
"""

from __future__ import annotations

import argparse
import json
import os
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
        self.results: list[Result] = []

    # -- set-up --------------------------------------------------------------------------------
    def up(self) -> None:
        shutil.rmtree(ROOT, ignore_errors=True)
        self.podman.start()
        self.podman.import_image(bed.ensure_rootfs("debian"), bed.DEBIAN_IMAGE)
        self.bus.start()
        self.polkit.start()
        self.daemon.start()
        self.boxctl("create", BOX)
        self.boxctl("start", BOX)
        if shutil.which("toolbox"):
            self.run(["toolbox", "create", "--image", bed.DEBIAN_IMAGE, "-c", TOOLBOX])
            self.run(["toolbox", "run", "-c", TOOLBOX, "true"])

    def down(self) -> None:
        self.daemon.stop()
        bed.remove_all_containers(self.podman)
        self.podman.stop()
        self.polkit.stop()
        self.bus.stop()

    @property
    def env(self) -> dict[str, str]:
        return {**self.podman.env, "BOXD_BUS_ADDRESS": self.bus.address}

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, env=self.env, check=True, capture_output=True, cwd="/",
                              **kwargs)

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
        started = time.perf_counter()
        subprocess.run(argv, env=self.env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, cwd="/")
        return time.perf_counter() - started

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
        then an exec; toolbox starts its container itself."""
        uid = str(self.user["uid"])
        tools = {
            # Stopped through boxd, so that its state is current when the run comes.
            "boxctl run": ([str(Path(sys.executable).with_name("boxctl")), "stop", BOX],
                           self.tools_for(["true"])["boxctl run"]),
            "podman exec": (["podman", "stop", "-t", "0", BOX],
                            ["sh", "-c", f"podman start {BOX} >/dev/null && "
                                         f"podman exec --user {uid} {BOX} true"]),
        }
        if shutil.which("toolbox"):
            tools["toolbox run"] = (["podman", "stop", "-t", "0", TOOLBOX],
                                    ["toolbox", "run", "-c", TOOLBOX, "true"])
        results = {name: Result("cold run: true", name, "s") for name in tools}
        for _ in range(max(3, self.rounds // 6)):
            for name, (stop, argv) in tools.items():
                self.run(stop)
                results[name].samples.append(self.wall(argv))
        self.results.extend(results.values())

    def create_and_start(self) -> None:
        """A new box to the first command in it."""
        boxctl = str(Path(sys.executable).with_name("boxctl"))
        results = {name: Result("create + first run", name, "s")
                   for name in ("boxctl run", "podman exec", "toolbox run")
                   if name != "toolbox run" or shutil.which("toolbox")}
        for i in range(3):
            name = f"cs{i}"
            started = time.perf_counter()
            self.boxctl("create", name)
            self.run(["runuser", "-u", self.user["name"], "--", "env",
                      f"BOXD_BUS_ADDRESS={self.bus.address}", boxctl, "run", name, "--", "true"])
            results["boxctl run"].samples.append(time.perf_counter() - started)
            self.boxctl("rm", "-f", name)
            started = time.perf_counter()  # a plain container: no user namespace, no set-up
            self.run(["podman", "run", "-d", "--name", name, bed.DEBIAN_IMAGE, "sleep", "inf"])
            self.run(["podman", "exec", name, "true"])
            results["podman exec"].samples.append(time.perf_counter() - started)
            self.run(["podman", "rm", "-f", "-t", "0", name])
            if "toolbox run" in results:
                started = time.perf_counter()
                self.run(["toolbox", "create", "--image", bed.DEBIAN_IMAGE, "-c", name])
                self.run(["toolbox", "run", "-c", name, "true"])
                results["toolbox run"].samples.append(time.perf_counter() - started)
                self.run(["podman", "rm", "-f", "-t", "0", name])
        self.results.extend(results.values())

    def concurrent(self, count: int = 50) -> None:
        """`count` boxctl runs at once: latency of each, and failures."""
        argv = self.tools_for(["sh", "-c", "echo ok"])["boxctl run"]

        def one() -> tuple[float, bool]:
            started = time.perf_counter()
            result = subprocess.run(argv, env=self.env, capture_output=True, cwd="/")
            return time.perf_counter() - started, result.stdout == b"ok\n"

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda _: one(), range(count)))
        result = Result(f"{count} concurrent runs", "boxctl run", "s",
                        [t for t, _ in outcomes])
        self.results.append(result)
        failures = sum(1 for _, ok in outcomes if not ok)
        self.footprint.append((f"{count} concurrent boxctl runs: failures", str(failures)))

    def keystroke(self, samples: int = 40) -> None:
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
        ax.set_title("boxd vs podman exec vs toolbox (time: lower is better; MiB/s: higher)")
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


def _fmt(value: float, unit: str) -> str:
    if unit != "s":
        return f"{value:.0f} {unit}"
    return f"{value * 1e6:.0f} µs" if value < 0.001 else f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="samples per tool (warm run)")
    parser.add_argument("--stream-mib", type=int, default=256, help="MiB for the stream test")
    parser.add_argument("--quick", action="store_true",
                        help="only warm runs and the stream (issue 3's pair)")
    args = parser.parse_args()
    bench = Bench(args.rounds, args.stream_mib)
    try:
        bench.up()
        bench.warm_run()
        bench.stream()
        if not args.quick:
            bench.cold_run()
            bench.create_and_start()
            bench.concurrent()
            bench.keystroke()
            bench.daemon_footprint()
    finally:
        bench.down()
    bench.save()
    print(bench.table())


if __name__ == "__main__":
    main()
