"""What boxctl says when it cannot reach boxd or podman: the bus's errors mapped to one line with a
hint for this kind of host, doctor's whole table with podman down, closed stdio, call timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from boxd import cli, client, doctor, faults
from boxd.client import CallError, Unreachable, unreachable_from


@pytest.mark.parametrize("name, message, kind, says", [
    ("org.freedesktop.DBus.Error.ServiceUnknown",
     "The name io.github.boxd1 was not provided by any .service files", "absent",
     "boxd is not running on the system bus"),
    ("org.freedesktop.DBus.Error.NameHasNoOwner", "", "absent", "boxd is not running"),
    ("org.freedesktop.DBus.Error.Spawn.ChildExited",
     "Launch helper exited with unknown return code 1", "absent",
     "the system bus could not start it (Launch helper exited with unknown return code 1)"),
    ("org.freedesktop.systemd1.LoadFailed", "Unit boxd.service not found.", "absent",
     "could not start it (Unit boxd.service not found.)"),
    ("org.freedesktop.DBus.Error.NoReply",
     "Message recipient disconnected from message bus without replying", "gone",
     "boxd left the bus before answering"),
    ("org.freedesktop.DBus.Error.NoReply", "Did not receive a reply.", "silent",
     "boxd did not answer"),
    ("org.freedesktop.DBus.Error.TimedOut", "Activation of io.github.boxd1 timed out",
     "silent", "boxd did not answer"),
])
def test_the_bus_errors_about_reaching_boxd(name, message, kind, says):
    error = unreachable_from(name, message, "system")
    assert error is not None and error.kind == kind
    assert says in error.message
    assert isinstance(error, CallError)  # callers that catch CallError still do


@pytest.mark.parametrize("name", ["io.github.boxd1.Error.NotFound",
                                  "org.freedesktop.DBus.Error.AccessDenied",
                                  "org.freedesktop.DBus.Error.InvalidArgs"])
def test_other_errors_stay_what_they_are(name):
    assert unreachable_from(name, "x", "system") is None


@pytest.mark.parametrize("systemd", [True, False])
def test_hints_fit_the_host(monkeypatch, systemd, capsys):
    monkeypatch.setattr(faults, "systemd_host", lambda: systemd)
    for line in (faults.start_boxd("system"), faults.start_boxd("session"),
                 faults.start_podman(), faults.start_polkit(), faults.start_bus("system")):
        assert ("systemctl" in line) == systemd, line
    status = cli._report(Unreachable("absent", "boxd is not running on the system bus"))
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("boxctl: cannot reach boxd: boxd is not running on the system bus "
                          "(hint: ")
    assert ("systemctl status boxd" in err) == systemd
    assert ("boxd-up.sh" in err) == (not systemd)
    cli._report(CallError("io.github.boxd1.Error.PodmanUnavailable", "podman is not reachable"))
    err = capsys.readouterr().err
    assert ("systemctl enable --now podman.socket" in err) == systemd
    assert ("podman system service" in err) == (not systemd)


def test_a_silent_boxd_names_the_timeout_setting(capsys):
    cli._report(Unreachable("silent", "boxd did not answer within 3 s"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BOXCTL_TIMEOUT=SECONDS" in err


def test_no_session_bus_is_one_line_naming_the_variable():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DBUS_SESSION_BUS_ADDRESS", "BOXD_BUS_ADDRESS", "BOXD_USER")}
    result = subprocess.run([sys.executable, "-m", "boxd.cli", "--user", "list"], env=env,
                            capture_output=True, timeout=60)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert err.startswith("boxctl: cannot reach boxd: DBUS_SESSION_BUS_ADDRESS is not set"), err
    assert "unexpected" not in err


def test_no_system_bus_is_one_line(tmp_path):
    env = {**os.environ, "BOXD_BUS_ADDRESS": f"unix:path={tmp_path}/none"}
    result = subprocess.run([sys.executable, "-m", "boxd.cli", "list"], env=env,
                            capture_output=True, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith("boxctl: cannot reach boxd: cannot connect to the system bus"), err


def test_closed_stdio_is_kept_off_the_bus_socket(tmp_path):
    # With stdout closed, the bus socket would otherwise become fd 1.
    script = ("import os, sys; from boxd import cli; closed = cli._guard_stdio(); "
              "print('not seen'); sys.stdout.flush(); "
              "print(sorted(closed), os.readlink('/proc/self/fd/1'), file=sys.stderr)")
    result = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -c "$1" >&-', "sh", script],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().strip() == "[1] /dev/null"


@pytest.mark.parametrize("value, expected", [("", 30.0), ("3", 3.0), ("0.5", 0.5), ("0", None),
                                             ("soon", 30.0)])
def test_call_timeout_setting(monkeypatch, value, expected):
    monkeypatch.setenv("BOXCTL_TIMEOUT", value)
    assert client.call_timeout() == expected


class _FakeClient:
    """boxd answering while podman is down."""

    timeout = 30.0
    bus = "system"

    def __init__(self) -> None:
        self.connection = self

    def send_and_get_reply(self, _msg: Any, timeout: float | None = None) -> Any:
        class Reply:
            body = (True,)
        return Reply()

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        if member == "Get":
            value = {"Version": "0.1.0", "PodmanAvailable": False,
                     "DefaultImage": "localhost/boxd-debian:12"}[body[1]]
            return (("s", value),)
        if member in ("ListImages", "Spawn"):
            raise CallError("io.github.boxd1.Error.PodmanUnavailable",
                            "podman is not reachable at /run/podman/podman.sock")
        if member == "ListBoxes":
            return ([["/p", "dev", "abc", "img", "running", "alice"]],)
        raise AssertionError(member)

    def close(self) -> None:
        pass


def test_doctor_prints_its_whole_table_with_podman_down(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "__version__", "0.1.0")
    checks = doctor.run_checks(_FakeClient, user_bus=False)  # type: ignore[arg-type]
    names = [c.name for c in checks]
    assert names == ["bus", "boxd", "podman", "polkit", "access", "image", "box dev"]
    failed = {c.name: c for c in checks if not c.ok}
    assert {"podman", "image", "box dev"} <= set(failed)
    assert failed["image"].fix == faults.start_podman()
    assert doctor.report(checks) == 1
    assert capsys.readouterr().out.count("✘") >= 3


def test_doctor_without_boxd_still_checks_what_needs_no_boxd():
    class Gone(_FakeClient):
        def call(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
            raise Unreachable("absent", "boxd is not running on the system bus")

    checks = doctor.run_checks(Gone, user_bus=False)  # type: ignore[arg-type]
    assert [c.name for c in checks] == ["bus", "boxd", "polkit", "access"]
    assert not checks[1].ok and checks[1].fix == faults.start_boxd("system")
