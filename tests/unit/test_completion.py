"""boxctl's completion scripts, run in the real shells with a stand-in boxctl and two boxes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from boxd import completion

BOXES = ("dev", "web")


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "boxctl"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'list --quiet' ] && printf '%s\\n' "
                    + " ".join(BOXES) + "\n")
    fake.chmod(0o755)
    for shell in completion.SHELLS:
        (tmp_path / f"boxctl.{shell}").write_text(completion.script(shell))
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "HOME": str(tmp_path),
            "COMPLETIONS": str(tmp_path)}


@pytest.mark.parametrize("shell, check", [("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]),
                                          ("fish", ["fish", "--no-execute"])])
def test_each_script_parses_in_its_shell(shell, check, shell_env):
    path = Path(shell_env["COMPLETIONS"]) / f"boxctl.{shell}"
    result = subprocess.run([*check, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _bash_complete(words: str, env: dict[str, str]) -> list[str]:
    script = (f"source $COMPLETIONS/boxctl.bash; COMP_WORDS=({words}); "
              "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _boxctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                         check=True).stdout
    return out.split()


def test_bash_offers_verbs_boxes_and_options(shell_env):
    assert "enter" in _bash_complete("boxctl ''", shell_env)
    assert _bash_complete("boxctl enter ''", shell_env) == list(BOXES)
    assert _bash_complete("boxctl rm w", shell_env) == ["web"]
    assert _bash_complete("boxctl run --no", shell_env) == ["--no-tty"]
    assert _bash_complete("boxctl completion ''", shell_env) == list(completion.SHELLS)


def _fish_complete(line: str, env: dict[str, str]) -> list[str]:
    script = f"source $COMPLETIONS/boxctl.fish; complete -C '{line}'"
    out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True,
                         env=env, check=True).stdout
    return [entry.split("\t")[0] for entry in out.splitlines()]


def test_fish_offers_verbs_boxes_and_options(shell_env):
    assert "enter" in _fish_complete("boxctl ", shell_env)
    assert _fish_complete("boxctl enter ", shell_env) == list(BOXES)
    assert "--force" in _fish_complete("boxctl rm --", shell_env)


def test_zsh_offers_boxes(shell_env):
    # compsys proper needs a terminal; a stand-in compadd shows what the function offers.
    script = ("compadd() { [[ $1 == -- ]] && shift; print -l -- $@ }; "
              "source $COMPLETIONS/boxctl.zsh 2>/dev/null; compdef() { :; }; "
              "words=(boxctl enter ''); CURRENT=3; _boxctl")
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True,
                         env=shell_env).stdout
    assert out.split() == list(BOXES)
