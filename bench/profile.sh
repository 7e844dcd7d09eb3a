#!/usr/bin/env bash
# Profile the daemon's hot path (as root): installs what it needs, then bench/profile.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/install-deps.sh"
venv=${BOXD_VENV:-/opt/boxd-venv}
[ -x "$venv/bin/py-spy" ] || "$venv/bin/pip" install -q py-spy
exec "$venv/bin/python" "$repo/bench/profile.py" "$@"
