"""build-rootfs.sh's debian path with a stand-in debootstrap on PATH: its "I:" lines are the
progress boxd shows, the rest only goes to the log, and a failure ends the script with the
log's tail and no tarball. (The real debootstrap runs in the end-to-end image tests.)"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "boxd" / "data" / "build-rootfs.sh"


def stand_in_debootstrap(bin_dir: Path, body: str) -> None:
    # Called as: debootstrap --variant=... --include=... SUITE TARGET MIRROR
    tool = bin_dir / "debootstrap"
    tool.write_text('#!/bin/sh\ntarget=$4\n' + body)
    tool.chmod(0o755)


def build(tmp_path: Path, body: str, shell: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in_debootstrap(bin_dir, body)
    out = tmp_path / "root.tar"
    result = subprocess.run([shell, str(SCRIPT), "debian", str(out)], capture_output=True,
                            text=True, timeout=60,
                            env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"})
    return result, out


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_progress_lines_pass_and_the_tarball_holds_the_root(tmp_path: Path, shell: str) -> None:
    # Printing and exiting at once is the case a follower started after the tool can miss.
    result, out = build(tmp_path, """
echo 'I: Retrieving Release'
echo 'W: a warning for the log only'
mkdir -p "$target/etc" && echo 'ID=debian' >"$target/etc/os-release"
echo 'I: Base system installed successfully.'
""", shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["I: Retrieving Release",
                                          "I: Base system installed successfully."]
    with tarfile.open(out) as tar:
        assert "./etc/os-release" in tar.getnames()


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_a_failed_debootstrap_fails_the_build_with_its_last_lines(tmp_path: Path,
                                                                  shell: str) -> None:
    result, out = build(tmp_path, """
echo 'I: Retrieving Release'
echo "E: Couldn't download dists/bookworm/Release"
exit 1
""", shell)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["I: Retrieving Release"]
    assert "E: Couldn't download dists/bookworm/Release" in result.stderr
    assert not out.exists() and not Path(f"{out}.part").exists()


def test_a_silent_debootstrap_still_builds(tmp_path: Path) -> None:
    """No "I:" line at all (grep finds nothing) is not a failure of the build."""
    result, out = build(tmp_path, 'mkdir -p "$target/etc"\n', "dash")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert out.exists()
