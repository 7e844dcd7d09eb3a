"""The warm launcher's request line, run by the shells boxes have (dash, busybox ash): whatever
the command, directory and environment hold, the launcher must get them back exactly."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boxd.warm import LAUNCHER, MAX_REQUEST_BYTES, request_line

SHELLS = [s for s in (["dash"], ["busybox", "sh"]) if shutil.which(s[0])]
# After the request the launcher has run `set --`: print what it set, NUL-separated.
REPORT = 'printf "%s\\0" "$@"; printf "%s\\0" "${BOXD_T1-unset}" "${BOXD_T2-unset}"'
HOSTILE = ["it's", 'say "hi"', "$(touch /tmp/boxd-pwned)", "`id`", "a\nb\n", "\\n", "*", "~",
           "; exit 9", "tab\there", "é ⬢", "", "-n", "--", "'\"'\"'", "$nl",
           "$__boxd_nl", "${HOME}"]


def launch(shell: list[str], line: bytes) -> list[str]:
    marker = "boxd-warm-test"
    result = subprocess.run([*shell, "-c", LAUNCHER + REPORT, "boxd-warm", marker], input=line,
                            capture_output=True, timeout=10, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(marker.encode())
    return result.stdout[len(marker):].decode().split("\0")[:-1]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_words_come_back_unchanged(shell, value):
    line = request_line({"BOXD_T1": value}, ["/", "--", value, "x"])
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
    assert launch(shell, line) == ["/", "--", value, "x", value, "unset"]
    assert not os.path.exists("/tmp/boxd-pwned")


@pytest.mark.skipif(not SHELLS, reason="no dash or busybox")
@settings(max_examples=60, deadline=None)
@given(args=st.lists(st.text(st.characters(blacklist_characters="\0",
                                           blacklist_categories=("Cs",))), max_size=5),
       value=st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))
def test_any_words_come_back_unchanged(args, value):
    line = request_line({"BOXD_T2": value}, ["/tmp", "--", *args])
    assert line is not None
    for shell in SHELLS:
        assert launch(shell, line) == ["/tmp", "--", *args, "unset", value]


def test_requests_the_shell_cannot_carry_go_the_ordinary_way():
    assert request_line({"NOT-A-NAME": "x"}, ["/", "--", "true"]) is None
    assert request_line({"__boxd_nl": "x"}, ["/", "--", "true"]) is None
    assert request_line({}, ["/", "--", "x" * MAX_REQUEST_BYTES]) is None


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_end_of_input_before_a_request_leaves_quietly(shell):
    result = subprocess.run([*shell, "-c", LAUNCHER + "echo ran", "boxd-warm", "m"],
                            input=b"", capture_output=True, timeout=10)
    assert (result.returncode, result.stdout) == (0, b"m")
