"""The entry point must parse under the shells of the images it runs in: dash and busybox ash."""

import shutil
import subprocess

import pytest

from boxd.model import init_script_path

SHELLS = [["dash", "-n"], ["busybox", "sh", "-n"], ["bash", "--posix", "-n"]]


@pytest.mark.parametrize("argv", SHELLS)
def test_parses(argv):
    if not shutil.which(argv[0]):
        pytest.skip(f"{argv[0]} is not installed")
    result = subprocess.run([*argv, str(init_script_path())], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fails_clearly_without_config(tmp_path):
    result = subprocess.run(["dash", str(init_script_path())], capture_output=True, text=True,
                            env={"BOXD_CONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout.startswith("boxd-init: error: box config")
