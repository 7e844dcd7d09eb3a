#!/usr/bin/env bash
# Run every check boxd has: install what is missing, lint, verify the systemd units, then the unit
# and end-to-end tests (real podman, a real bus, the real daemon, real users). Run as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BOXD_VENV:-/opt/boxd-venv}
cd "$repo"

bash scripts/install-deps.sh

echo "== ruff"
"$venv/bin/ruff" check .

echo "== systemd-analyze verify"
systemd-analyze verify systemd/boxd.service
runtime=$(mktemp -d)
XDG_RUNTIME_DIR=$runtime systemd-analyze --user verify systemd/boxd-session.service
rm -rf "$runtime"

echo "== pytest"
exec "$venv/bin/pytest" -ra "$@"
