import shutil
import subprocess
import sys

import pytest

from bed import REPO

PAGES = ["boxctl.1", "boxd.8"]


def test_man_pages_match_the_parsers(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-man.py"),
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == PAGES
    for page in PAGES:
        committed = REPO / "docs" / "man" / page
        assert committed.exists(), f"docs/man/{page} is missing: run scripts/gen-man.py"
        assert committed.read_text() == (tmp_path / page).read_text(), \
            f"docs/man/{page} is out of date: run scripts/gen-man.py"


@pytest.mark.parametrize("page", PAGES)
def test_man_page_renders_without_warnings(page):
    if not shutil.which("groff"):
        pytest.skip("groff is not installed (Debian: groff-base)")
    # -ww: every warning groff has; -z: format, print nothing but the warnings.
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                             str(REPO / "docs" / "man" / page)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
