"""Profile boxd's hot path: py-spy samples the daemon while a user runs `boxctl run BOX -- true`
over and over, and the table shows where the daemon's time went (inclusive samples per function,
boxd's own functions and the libraries they call).

    sudo bench/profile.sh [--runs 100]      (installs py-spy, then runs this)

It runs on its own bed (podman service, bus, polkitd, daemon) under /var/tmp/boxd-profile.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import bed  # noqa: E402  (the test bed: real podman, bus and daemon with test-owned config)

ROOT = Path("/var/tmp/boxd-profile")
BOX = "profiled"
# Frames that only say "the event loop ran something": not where the time went.
PLUMBING = re.compile(r"asyncio/|threading\.py|concurrent/futures|runpy|<module>|boxd/daemon\.py"
                      r"|selectors\.py")


def _frames(stack: str) -> list[str]:
    names = []
    for frame in stack.split(";"):
        match = re.match(r"(.*) \((.*?):\d+\)$", frame)
        names.append(f"{match.group(2)}:{match.group(1)}" if match else frame)
    return names


def aggregate(raw: Path) -> tuple[int, collections.Counter[str]]:
    """(busy samples, inclusive samples per file:function) from py-spy's raw output. A sample
    is busy unless it is the loop waiting in select or an idle worker thread."""
    busy = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = _frames(stack)
        if "selectors.py" in frames[-1] or not any(not PLUMBING.search(f) for f in frames):
            continue
        busy += int(count)
        for name in set(frames):
            if not PLUMBING.search(name):
                inclusive[name] += int(count)
    return busy, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="boxctl runs to sample")
    parser.add_argument("--top", type=int, default=25, help="functions to show")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

    shutil.rmtree(ROOT, ignore_errors=True)
    podman = bed.Podman(ROOT / "podman", Path("/run/boxd-profile"))
    bus = bed.Bus(ROOT / "bus")
    polkit = bed.Polkit(bus.address)
    daemon = bed.Daemon(ROOT / "boxd", bus.address, podman.socket,
                        extra_config={"log_level": "warning"})
    user = bed.ensure_user("boxd-bench", 2201, groups=("boxd",))
    boxctl = ["runuser", "-u", str(user["name"]), "--", "env",
              f"BOXD_BUS_ADDRESS={bus.address}", str(Path(sys.executable).with_name("boxctl"))]
    try:
        podman.start()
        podman.import_image(bed.ensure_rootfs("debian"), bed.DEBIAN_IMAGE)
        bus.start()
        polkit.start()
        daemon.start()
        for step in (["create", BOX], ["start", BOX], ["run", BOX, "--", "true"]):
            subprocess.run([*boxctl, *step], check=True, capture_output=True, cwd="/")
        assert daemon.proc is not None
        raw = ROOT / "daemon.raw"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(daemon.proc.pid), "--rate", "500",
                                "--format", "raw", "--output", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        started = time.monotonic()
        for _ in range(args.runs):
            subprocess.run([*boxctl, "run", BOX, "--", "true"], check=True, cwd="/")
        elapsed = time.monotonic() - started
        spy.send_signal(2)  # py-spy writes its output on SIGINT
        spy.wait(30)
        busy, inclusive = aggregate(raw)
        print(f"{args.runs} runs in {elapsed:.1f} s ({elapsed / args.runs * 1000:.1f} ms each); "
              f"daemon busy {busy * 2 / args.runs:.1f} ms per run (500 Hz samples)\n")
        print(f"{'samples':>8}  {'ms/run':>7}  function")
        for name, count in inclusive.most_common(args.top):
            print(f"{count:>8}  {count * 2 / args.runs:>7.2f}  {name}")
    finally:
        daemon.stop()
        bed.remove_all_containers(podman)
        podman.stop()
        polkit.stop()
        bus.stop()


if __name__ == "__main__":
    main()
