#!/usr/bin/env bash
# Run boxd's benchmarks in one command (as root): installs what they need, then bench/run.py.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/install-deps.sh"
if ! command -v toolbox >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman-toolbox
fi
exec "${BOXD_VENV:-/opt/boxd-venv}/bin/python" "$repo/bench/run.py" "$@"
