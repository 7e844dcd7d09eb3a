"""Terminal integration: a VTE terminal (Ptyxis, GNOME Terminal) learns from OSC 777 / OSC 3008
sequences that a tab entered a box, and the prompt carries the box's name marker."""

from __future__ import annotations

import pytest

from bed.term import Terminal
from conftest import boxctl_argv

pytestmark = pytest.mark.e2e
PUSH = b"\x1b]777;container;push;alice-term;boxd;"
POP = b"\x1b]777;container;pop;;;"


@pytest.fixture(scope="module")
def term_box(boxd_bed, alice):
    reply = boxd_bed.manager("CreateBox", "ssa{sv}", ["alice-term", "", {}], user=alice["name"])
    assert "error" not in reply, reply
    yield "alice-term"
    boxd_bed.box("alice-term", "Remove", "b", [True])


def enter(boxd_bed, alice, vte: str) -> Terminal:
    return Terminal(boxctl_argv(boxd_bed, alice["name"], "enter", "alice-term"),
                    env={"VTE_VERSION": vte}, cwd=alice["home"])


def test_enter_in_a_vte_terminal_pushes_and_pops_the_container(boxd_bed, alice, term_box):
    term = enter(boxd_bed, alice, "7600")
    try:
        shown = term.read_until(PUSH + str(alice["uid"]).encode() + b"\x1b\\")
        assert b"\x1b]3008;start=boxd-" in term.read_until(b"container=alice-term\x1b\\") + shown
        term.read_until("⬢ ")
        term.send("exit\r")
        term.read_until(b"\x1b]3008;end=boxd-")
        term.read_until(POP + str(alice["uid"]).encode() + b"\x1b\\")
        assert term.wait() == 0
    finally:
        term.close()


def test_no_sequences_outside_vte_terminals(boxd_bed, alice, term_box):
    term = enter(boxd_bed, alice, "")
    try:
        term.read_until("⬢ ")
        term.send("exit\r")
        assert term.wait() == 0
        assert b"]777;" not in term.output
    finally:
        term.close()


def test_the_shipped_terminal_example_spawns_with_its_own_pty(boxd_bed, alice, term_box):
    """examples/terminal-spawn.py: Spawn with a PTY follower as fds 0-2, output read from the
    master, the exit status from Exited."""
    import subprocess
    import sys

    from bed import REPO

    argv = ["runuser", "-u", alice["name"], "--", "env", f"BOXD_BUS_ADDRESS={boxd_bed.address}",
            sys.executable, "-", "alice-term", "sh", "-c", "tty; stty size; exit 5"]
    result = subprocess.run(argv, input=(REPO / "examples" / "terminal-spawn.py").read_bytes(),
                            capture_output=True, timeout=60, cwd="/")
    assert result.returncode == 5, result.stderr
    assert b"/dev/pts/" in result.stdout and b"24 80" in result.stdout
