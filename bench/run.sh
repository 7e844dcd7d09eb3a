#!/usr/bin/env bash
# Run boxd's benchmarks in one command (as root): installs what they need, then bench/run.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/install-deps.sh"
if ! command -v toolbox >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman-toolbox
fi
venv=${BOXD_VENV:-/opt/boxd-venv}
"$venv/bin/python" -c "import matplotlib" 2>/dev/null || "$venv/bin/pip" install -q matplotlib
exec "$venv/bin/python" "$repo/bench/run.py" "$@"
