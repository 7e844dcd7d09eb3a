"""Declarative boxes: apply a manifest, change it, apply again; real daemon, podman, users."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bed import BUSYBOX_IMAGE
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e


def apply(boxd, user, home, text, *flags):
    path = Path(home) / "boxes.yaml"
    path.write_text(text)
    return subprocess.run(boxctl_argv(boxd, user, "apply", str(path), *flags),
                          capture_output=True, timeout=300, cwd="/")


def test_apply_create_update_in_place_and_recreate(boxd_bed, alice):
    user, uid, home = alice["name"], alice["uid"], alice["home"]
    for name, content in (("one", "first"), ("two", "second")):
        Path(f"/srv/boxd-m-{name}").mkdir(parents=True, exist_ok=True)
        Path(f"/srv/boxd-m-{name}/marker").write_text(content)
    first = ("boxes:\n"
             "  alice-m1:\n"
             "    volumes: [/srv/boxd-m-one:/data]\n"
             "    env: {STAGE: one}\n"
             "  alice-m2: {}\n")
    result = apply(boxd_bed, user, home, first, "--dry-run")
    assert result.stdout.decode().splitlines() == [
        "alice-m1: would create (from localhost/boxd-debian:12)",
        "alice-m2: would create (from localhost/boxd-debian:12)"]
    assert boxd_bed.podman.cli("container", "exists", "alice-m1", check=False).returncode == 1

    result = apply(boxd_bed, user, home, first)
    assert result.returncode == 0, result.stderr
    assert "alice-m1: created" in result.stdout.decode()
    assert boxd_bed.box("alice-m1", "Start", user=user) == {"body": []}
    m1_id = boxd_bed.podman.inspect("alice-m1")["Id"]
    assert boxd_bed.exec_in("alice-m1", "cat /data/marker", uid=uid).stdout == b"first"

    second = ("boxes:\n"
              "  alice-m1:\n"
              "    volumes: [/srv/boxd-m-two:/data2:ro]\n"
              "    env: {STAGE: two}\n"
              "    hooks: [\"echo hooked > /etc/boxd-hook\"]\n"
              f"  alice-m2: {{image: {BUSYBOX_IMAGE}}}\n")
    inside_home = Path(home) / "made-in-m2"
    assert boxd_bed.box("alice-m2", "Start", user=user) == {"body": []}
    boxd_bed.exec_in("alice-m2", f"echo kept > {inside_home}", uid=uid)
    m2_id = boxd_bed.podman.inspect("alice-m2")["Id"]

    result = apply(boxd_bed, user, home, second)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "alice-m1: updated in place (volumes, env, hooks updated in place; applies at the " \
           "next start)" in out
    assert "alice-m2: re-created (image localhost/boxd-debian:12 -> " in out

    assert boxd_bed.box("alice-m1", "Stop", user=user) == {"body": []}
    assert boxd_bed.box("alice-m1", "Start", user=user) == {"body": []}
    assert boxd_bed.podman.inspect("alice-m1")["Id"] == m1_id  # same container
    assert boxd_bed.exec_in("alice-m1", "cat /data2/marker", uid=uid).stdout == b"second"
    assert boxd_bed.exec_in("alice-m1", "test -e /data/marker", check=False).returncode != 0
    profile = boxd_bed.exec_in("alice-m1", ". /etc/profile.d/boxd-env.sh; echo $STAGE", uid=uid)
    assert profile.stdout == b"two\n"
    assert boxd_bed.exec_in("alice-m1", "cat /etc/boxd-hook").stdout == b"hooked\n"

    assert boxd_bed.podman.inspect("alice-m2")["Id"] != m2_id  # re-created
    assert boxd_bed.box("alice-m2", "Start", user=user) == {"body": []}
    assert boxd_bed.exec_in("alice-m2", f"cat {inside_home}", uid=uid).stdout == b"kept\n"

    result = apply(boxd_bed, user, home, second)
    assert result.stdout.decode().splitlines() == ["alice-m1: unchanged", "alice-m2: unchanged"]
    for name in ("alice-m1", "alice-m2"):
        boxd_bed.box(name, "Remove", "b", [True], user=user)


def test_invalid_manifest_names_file_and_line(boxd_bed, alice):
    result = apply(boxd_bed, alice["name"], alice["home"],
                   "boxes:\n  alice-bad:\n    imgae: x\n")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert f"{alice['home']}/boxes.yaml line 3: unknown key 'imgae'" in err
    result = apply(boxd_bed, alice["name"], alice["home"], "boxes:\n  alice-bad: [\n")
    assert result.returncode == 1 and "not valid YAML" in result.stderr.decode()
    assert "line" in result.stderr.decode()
    assert boxd_bed.podman.cli("container", "exists", "alice-bad", check=False).returncode == 1


def test_packages_are_installed_at_start_with_the_boxs_package_manager(boxd_bed, alice):
    """apt in a Debian box, from Debian's mirror (the one registry these machines reach)."""
    user = alice["name"]
    result = apply(boxd_bed, user, alice["home"], "boxes:\n  alice-pkg: {packages: [less]}\n")
    assert result.returncode == 0, result.stderr
    try:
        assert boxd_bed.exec_in("alice-pkg", "true", check=False).returncode != 0
        # boxctl starts it as a Job and shows what the entry point prints on the way.
        start = subprocess.run(boxctl_argv(boxd_bed, user, "start", "alice-pkg"),
                               capture_output=True, timeout=300, cwd="/")
        assert start.returncode == 0, start.stderr
        shown = start.stderr.decode()
        assert shown.startswith("Starting box alice-pkg ...\n"), shown
        assert "  boxd-init: installing packages: less\n" in shown
        assert "Setting up less" in shown  # apt's own words, as they came
        assert boxd_bed.exec_in("alice-pkg", "command -v less").stdout.strip() == b"/usr/bin/less"
        log = boxd_bed.podman.cli("logs", "alice-pkg").stdout.decode()
        assert "boxd-init: installing packages: less" in log
        # Running already: nothing to show, no job.
        again = subprocess.run(boxctl_argv(boxd_bed, user, "start", "alice-pkg"),
                               capture_output=True, timeout=60, cwd="/")
        assert (again.returncode, again.stderr) == (0, b"")
        # Next start: already there, nothing to install.
        assert boxd_bed.box("alice-pkg", "Stop", user=user) == {"body": []}
        assert boxd_bed.box("alice-pkg", "Start", user=user) == {"body": []}
        log = boxd_bed.podman.cli("logs", "alice-pkg").stdout.decode()
        assert log.count("installing packages") == 1
    finally:
        boxd_bed.box("alice-pkg", "Remove", "b", [True], user=user)


def test_a_failing_start_job_says_why(boxd_bed, alice):
    user = alice["name"]
    result = apply(boxd_bed, user, alice["home"],
                   "boxes:\n  alice-hookfail: {hooks: [\"echo about to fail; exit 3\"]}\n")
    assert result.returncode == 0, result.stderr
    try:
        start = subprocess.run(boxctl_argv(boxd_bed, user, "start", "alice-hookfail"),
                               capture_output=True, timeout=120, cwd="/")
        said = start.stderr.decode()
        assert start.returncode == 1, said
        assert "  about to fail\n" in said  # the hook's own output, shown as it ran
        last = said.strip().splitlines()[-1]
        assert last.startswith("boxctl: box 'alice-hookfail' failed to start"), said
        # `run` on a stderr that is not a terminal says only why (as Toolbx, no progress).
        run = subprocess.run(boxctl_argv(boxd_bed, user, "run", "alice-hookfail", "--", "true"),
                             capture_output=True, timeout=120, cwd="/")
        said = run.stderr.decode()
        assert run.returncode == 1, said
        assert len(said.strip().splitlines()) == 1, said
        assert said.startswith("boxctl: box 'alice-hookfail' failed to start"), said
    finally:
        boxd_bed.box("alice-hookfail", "Remove", "b", [True], user=user)
