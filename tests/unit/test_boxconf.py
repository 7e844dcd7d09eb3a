"""The generated box.conf is sh code run as root in the box: prove hostile values stay data."""

import shutil
import subprocess

import pytest

from boxd.boxconf import render
from boxd.model import BoxSettings, Owner

HOSTILE = ["it's", '"$(touch /tmp/pwned)"', "`id`", "a\nb", "$HOME", "; rm -rf /", "\\", "ü ⬢"]


@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_values_round_trip_through_a_real_shell(shell, tmp_path):
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed")
    settings = BoxSettings().updated({
        "env": {f"V{i}": value for i, value in enumerate(HOSTILE)},
        "volumes": ["/srv/a:/data"],
    })
    owner = Owner(1000, 1000, "alice", "/home/alice", "/bin/bash", "alice")
    conf = tmp_path / "box.conf"
    conf.write_text(render(name="dev", hostname="dev", owner=owner, settings=settings,
                           token="tok"))
    probe = (
        f". {conf}\n"
        "boxd_volume() { printf 'VOL<%s|%s|%s>\\n' \"$1\" \"$2\" \"$3\"; }\n"
        "boxd_env() { printf 'ENV<%s=%s>\\n' \"$1\" \"$2\"; }\n"
        "printf 'USER<%s> UID<%s> TOKEN<%s>\\n' \"$BOXD_USER\" \"$BOXD_UID\" "
        "\"$BOXD_START_TOKEN\"\n"
        "boxd_apply\n"
    )
    argv = ["busybox", "sh", "-c", probe] if shell == "busybox" else ["dash", "-c", probe]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "USER<alice> UID<1000> TOKEN<tok>" in out
    assert "VOL</srv/a|/data|rw>" in out
    for i, value in enumerate(HOSTILE):
        assert f"ENV<V{i}={value}>" in out
    assert not (tmp_path / "pwned").exists()
