"""The client's waits end: on a private dbus-daemon, a stand-in for boxd that answers pings but
not the call keeps boxctl waiting; one that is stopped times it out; one that leaves the bus while
a job runs ends the wait at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from boxd.client import BoxdClient, Unreachable

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# Owns io.github.boxd1; answers Peer.Ping, never answers anything else; "StartJob" is answered
# with a job path and then nothing (a boxd that will die before Finished).
STAND_IN = textwrap.dedent("""
    import sys
    from jeepney import MessageType, new_method_return, HeaderFields
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection
    conn = open_dbus_connection(sys.argv[1])
    conn.send_and_get_reply(message_bus.RequestName("io.github.boxd1"))
    print("ready", flush=True)
    while True:
        msg = conn.receive()
        if msg.header.message_type != MessageType.method_call:
            continue
        member = msg.header.fields.get(HeaderFields.member)
        if member == "Ping":
            conn.send(new_method_return(msg))
        elif member == "StartJob":
            conn.send(new_method_return(msg, "o", ("/io/github/boxd1/job/1",)))
""")


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "bus.sock"
    config = tmp_path / "bus.conf"
    config.write_text(CONFIG.format(socket=socket))
    # It prints its address once it listens (the socket file appears a moment before).
    proc = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork",
                             "--nopidfile", "--print-address=1"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip(), "no dbus-daemon"
        yield f"unix:path={socket}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def stand_in(bus: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, bus], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def connect(bus: str, monkeypatch: pytest.MonkeyPatch, timeout: str) -> BoxdClient:
    monkeypatch.setenv("BOXD_BUS_ADDRESS", bus)
    monkeypatch.setenv("BOXCTL_TIMEOUT", timeout)
    return BoxdClient.connect()


def test_a_live_boxd_is_waited_for_and_a_stopped_one_is_not(bus, stand_in, monkeypatch):
    client = connect(bus, monkeypatch, "0.6")
    try:
        # It answers pings for 2 s, far past the timeout, then stops.
        threading.Timer(2, os.kill, (stand_in.pid, signal.SIGSTOP)).start()
        started = time.monotonic()
        with pytest.raises(Unreachable) as caught:
            client.manager("ListBoxes")
        took = time.monotonic() - started
        assert caught.value.kind == "silent"
        assert "did not answer within 0.6 s" in caught.value.message
        assert 1.9 < took < 10, took
    finally:
        client.close()


def test_a_boxd_that_leaves_during_a_job_ends_the_wait_at_once(bus, stand_in, monkeypatch):
    from boxd.pull import start_box

    client = connect(bus, monkeypatch, "0")  # no timeout: only the name watch can end it
    try:
        threading.Timer(0.5, stand_in.kill).start()
        started = time.monotonic()
        with pytest.raises(Unreachable) as caught:
            start_box(client, "dev", quiet=True)
        assert caught.value.kind == "gone"
        assert time.monotonic() - started < 5
    finally:
        client.close()


def test_a_boxd_gone_before_the_call_is_not_running(bus, monkeypatch):
    client = connect(bus, monkeypatch, "5")
    try:
        with pytest.raises(Unreachable) as caught:
            client.manager("ListBoxes")
        assert caught.value.kind == "absent"
    finally:
        client.close()
