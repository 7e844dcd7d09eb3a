"""boxctl's argument reading: the argparse-free fast path for plain run/enter must read exactly
what argparse reads, and leave everything else to argparse."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxd.cli import parse_with_argparse, plain_session

TOKENS = ["run", "enter", "--user", "-c", "--container", "dev", "--", "ls", "-la", "-T",
          "--no-tty", "-q", "--quiet", "-x", "-h", "--help", "box2", "list", "true"]
FIELDS = ("verb", "user", "box", "no_tty", "quiet")


def argparse_reads(argv: list[str]):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse_with_argparse(argv)
        except SystemExit:
            return None


def same(plain, full) -> bool:
    # enter has no --no-tty: run() reads it with a default of False.
    if any(getattr(plain, f, False) != getattr(full, f, False) for f in FIELDS):
        return False
    if plain.verb == "run":
        return plain.command == full.command
    return plain.name == full.name


@pytest.mark.parametrize("argv", [
    ["run", "dev", "--", "true"], ["run", "-c", "dev", "ls", "-la"], ["run", "ls", "-la"],
    ["--user", "run", "-T", "-q", "--", "ls"], ["enter"], ["enter", "dev"], ["enter", "-c", "dev"],
    ["run", "--container", "dev", "--", "sh", "-c", "exit 7"],
])
def test_plain_forms_skip_argparse_and_agree_with_it(argv, monkeypatch):
    monkeypatch.delenv("BOXD_USER", raising=False)
    plain = plain_session(argv)
    assert plain is not None
    assert same(plain, argparse_reads(argv))


@pytest.mark.parametrize("argv", [
    ["run", "-h"], ["run"], ["run", "--"], ["run", "-x", "ls"], ["enter", "-T"], ["list"],
    ["enter", "a", "b"], ["run", "a", "b", "--", "ls"], ["run", "-c"], ["--version"],
])
def test_anything_else_goes_to_argparse(argv):
    assert plain_session(argv) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_whatever_the_fast_path_reads_argparse_reads_the_same(argv):
    plain = plain_session(argv)
    if plain is not None:
        full = argparse_reads(argv)
        assert full is not None, f"argparse rejects {argv} that the fast path took"
        assert same(plain, full), (vars(plain), vars(full))
