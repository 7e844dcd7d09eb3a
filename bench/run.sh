#!/usr/bin/env bash
# Run boxd's benchmarks in one command (as root): installs what they need, then bench/run.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/install-deps.sh"
# The baselines: Toolbx (run as root) and Distrobox (run rootless, as the bench's user).
baselines=()
command -v toolbox >/dev/null || baselines+=(podman-toolbox)
command -v distrobox >/dev/null || baselines+=(distrobox)
if [ ${#baselines[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${baselines[@]}"
fi
venv=${BOXD_VENV:-/opt/boxd-venv}
"$venv/bin/python" -c "import matplotlib" 2>/dev/null || "$venv/bin/pip" install -q matplotlib
exec "$venv/bin/python" "$repo/bench/run.py" "$@"
