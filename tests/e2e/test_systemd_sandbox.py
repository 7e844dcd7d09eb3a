"""The shipped unit's syscall filter against the syscalls the real daemon makes.

These machines have no systemd as PID 1, so boxd.service never runs here; but its sandbox can be
checked in part. The filter is computed the way systemd computes it (lines in order: the first
decides allow-list, later ones add or take away; groups expanded by systemd-analyze itself), and
strace watches the test bed's daemon through a box's whole life. A syscall outside the filter
would kill the daemon under systemd (SIGSYS)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import bed
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
UNIT = bed.UNIT


@functools.cache
def expand(name: str) -> frozenset[str]:
    """A syscall or @group, as the set of syscalls systemd means by it."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                             text=True, check=True).stdout.splitlines()[1:]
    members = [m for m in (line.strip() for line in listing) if m and not m.startswith("#")]
    return frozenset().union(*(expand(m) for m in members))


def allowed_by_unit() -> frozenset[str]:
    allowed: set[str] = set()
    lines = re.findall(r"^SystemCallFilter=(.*)$", UNIT.read_text(), re.M)
    assert lines and not lines[0].startswith("~"), "expected an allow-list first"
    for line in lines:
        deny = line.startswith("~")
        names = set().union(*(expand(n) for n in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return frozenset(allowed)


def traced_threads(pid: int) -> bool:
    """Whether every thread of `pid` has a tracer (and it has threads: it is alive)."""
    statuses = list(Path(f"/proc/{pid}/task").glob("*/status"))
    if not statuses:
        return False
    for status in statuses:
        try:
            tracer = next(line for line in status.read_text().splitlines()
                          if line.startswith("TracerPid:"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
        if tracer.split()[1] == "0":
            return False
    return True


def test_the_units_sandbox_allows_what_the_daemon_does(boxd_bed, alice):
    """Syscalls (SystemCallFilter=), socket families (RestrictAddressFamilies=) and no memory
    both writable and executable (MemoryDenyWriteExecute=), over a box's life: create, a cold
    start through the readiness FIFO, cold and warm sessions, stop, remove."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    trace = boxd_bed.daemon.log_path.parent / "strace-daemon.txt"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-s", "0", "-o", str(trace),
                               "-p", str(boxd_bed.daemon.proc.pid)])
    user, box = alice["name"], "alice-sandbox"
    try:
        bed.wait_for(lambda: traced_threads(boxd_bed.daemon.proc.pid), 30,
                     "strace to attach to every thread of the daemon")
        assert "error" not in boxd_bed.manager("CreateBox", "ssa{sv}", [box, "", {}], user=user)
        for _ in range(3):  # a cold start and session, then warm ones
            run = subprocess.run(boxctl_argv(boxd_bed, user, "run", "-q", box, "--", "true"),
                                 capture_output=True, timeout=120, cwd="/")
            assert run.returncode == 0, run.stderr
        assert boxd_bed.box(box, "Stop", user=user) == {"body": []}
        assert boxd_bed.box(box, "Remove", "b", [False], user=user) == {"body": []}
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        boxd_bed.box(box, "Remove", "b", [True], user=user)
    lines = trace.read_text().splitlines()
    calls = [m.group(1) for m in (re.match(r"^\d+\s+(?:<\.\.\. )?(\w+)[( ]", line)
                                  for line in lines) if m]
    used = set(calls)
    assert {"chown", "mknodat"} <= used, used  # it saw the work: box config, readiness FIFO
    assert used - allowed_by_unit() == set()
    families = set(re.findall(r"\bsocket(?:pair)?\((AF_\w+)", "\n".join(lines)))
    assert families and families <= set(bed.unit_setting("RestrictAddressFamilies").split())
    assert bed.unit_setting("MemoryDenyWriteExecute") == "yes"
    assert not [line for line in lines
                if re.search(r"\b(mmap|mprotect)\(.*PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE",
                             line)]


def test_the_emulated_sandbox_is_in_place(boxd_bed):
    """With BOXD_TEST_UNIT_SANDBOX=1 (scripts/test.sh's second round) the suite's daemon must
    really be inside it, or that round proves nothing."""
    if os.environ.get("BOXD_TEST_UNIT_SANDBOX") != "1":
        pytest.skip("the daemon runs without the unit's sandbox in this round")
    pid = boxd_bed.daemon.proc.pid
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = (fields[5].split(","), line.split(" - ")[1].split()[2].split(","))
    assert "ro" in mounts["/"][0]  # ProtectSystem=strict, ProtectHome=read-only
    state = str(boxd_bed.daemon.root / "state")
    assert "rw" in mounts[state][0]  # StateDirectory=
    assert "hidepid=invisible" in mounts["/proc"][1] and "subset=pid" in mounts["/proc"][1]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")  # PrivateNetwork=
    status = Path(f"/proc/{pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    bounding = int(re.search(r"^CapBnd:\s*(\w+)$", status, re.M).group(1), 16)
    # CapabilityBoundingSet=CAP_CHOWN (0) CAP_FOWNER (3) CAP_DAC_READ_SEARCH (2) CAP_KILL (5)
    assert bed.unit_setting("CapabilityBoundingSet").split() == [
        "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_READ_SEARCH", "CAP_KILL"]
    assert bounding == (1 << 0) | (1 << 3) | (1 << 2) | (1 << 5)

