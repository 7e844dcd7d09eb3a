"""boxctl's argument reading: the argparse-free fast path for plain run/enter must read exactly
what argparse reads, and leave everything else to argparse."""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxd import cli
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


@pytest.mark.parametrize("user, expected", [
    ("alice", "alice-box"), ("john.doe", "john.doe-box"), ("a" * 59, "a" * 59 + "-box"),
    # Names a box name cannot hold as they are: cleaned, and the uid keeps them apart.
    ("DOMAIN\\jo", "DOMAIN-jo-4242-box"), ("_svc", "svc-4242-box"), ("$x", "x-4242-box"),
    ("josé", "jos-4242-box"), ("é", "user-4242-box"), ("a" * 60, "a" * 40 + "-4242-box"),
])
def test_each_user_has_a_default_box_of_their_own(monkeypatch, user, expected):
    import pwd
    from types import SimpleNamespace

    from boxd import cli
    from boxd.model import validate_name

    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name=user))
    assert cli.default_box() == expected
    assert validate_name(expected) == expected


def test_commands_without_a_name_use_the_default_box():
    from boxd.cli import default_box

    assert argparse_reads(["create"]).name == default_box()
    assert argparse_reads(["create", "dev"]).name == "dev"
    assert argparse_reads(["start"]).names == [default_box()]
    assert argparse_reads(["stop", "a", "b"]).names == ["a", "b"]
    assert argparse_reads(["terminal"]).name == default_box()
    assert argparse_reads(["rm"]) is None  # removing never guesses


def test_an_unknown_option_is_named_not_a_missing_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(["--foo"])
    assert exit_info.value.code == 2
    assert "unrecognized option '--foo'" in capsys.readouterr().err


def test_bare_boxctl_lists_the_common_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse([])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("boxctl: missing command\nThese are some common commands:\n")
    assert "  enter" in err and "Run 'boxctl --help'" in err


def test_rmi_takes_several_images():
    args = cli.parse(["rmi", "-f", "a:1", "b:2"])
    assert (args.references, args.force) == (["a:1", "b:2"], True)


def test_an_empty_list_prints_nothing(capsys):
    cli._print_list([], as_json=False)
    assert capsys.readouterr().out == ""
    cli._print_list([], as_json=True)
    assert capsys.readouterr().out.strip() == "[]"
