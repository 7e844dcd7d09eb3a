"""boxd's benchmarks: boxd against the tools people use today, measured side by side in one run on
the same image and the same podman storage, reported as medians and ratios.

    sudo bench/run.sh            (installs podman-toolbox, then runs this)

Baselines: `podman exec` (the floor boxd builds on) and Toolbx's `toolbox run` (Debian's
podman-toolbox). Results go to stdout as a table and to bench/results/latest.{json,md}.
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
                                 extra_config={"log_level": "warning"})
        self.user = bed.ensure_user("boxd-bench", 2201)
        self.results: list[Result] = []

    # -- set-up --------------------------------------------------------------------------------
    def up(self) -> None:
        shutil.rmtree(ROOT, ignore_errors=True)
        self.podman.start()
        self.podman.import_image(bed.ensure_rootfs("debian"), bed.DEBIAN_IMAGE)
        self.bus.start()
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

    # -- report --------------------------------------------------------------------------------
    def table(self) -> str:
        lines = ["| benchmark | tool | median | p95 | vs podman exec |",
                 "| --- | --- | ---: | ---: | ---: |"]
        for group in dict.fromkeys(r.group for r in self.results):
            rows = [r for r in self.results if r.group == group]
            base = next(r for r in rows if r.tool == "podman exec").median
            for r in rows:
                ratio = r.median / base
                lines.append(f"| {group} | {r.tool} | {_fmt(r.median, r.unit)} | "
                             f"{_fmt(r.p95, r.unit)} | {ratio:.2f}x |")
        return "\n".join(lines)

    def save(self) -> None:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(
            [{"group": r.group, "tool": r.tool, "unit": r.unit, "median": r.median,
              "p95": r.p95, "samples": r.samples} for r in self.results], indent=2))
        (RESULTS / "latest.md").write_text(self.table() + "\n")


def _fmt(value: float, unit: str) -> str:
    return f"{value * 1000:.1f} ms" if unit == "s" else f"{value:.0f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="samples per tool (warm run)")
    parser.add_argument("--stream-mib", type=int, default=256, help="MiB for the stream test")
    args = parser.parse_args()
    bench = Bench(args.rounds, args.stream_mib)
    try:
        bench.up()
        bench.warm_run()
        bench.stream()
    finally:
        bench.down()
    bench.save()
    print(bench.table())


if __name__ == "__main__":
    main()
