import subprocess
import sys

from bed import REPO


def test_api_doc_matches_the_contract():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-api-doc.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
