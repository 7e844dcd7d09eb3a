#!/usr/bin/env bash
# Run every check boxd has: install what is missing, lint, verify the systemd units, then the unit
# and end-to-end tests (real podman, a real bus, the real daemon, real users), and the end-to-end
# tests once more with the daemon inside boxd.service's sandbox. Run as root. With arguments, only
# pytest with those arguments.
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
if [ $# -gt 0 ]; then
    exec "$venv/bin/pytest" -raR "$@"
fi
"$venv/bin/pytest" -raR

# No systemd runs as PID 1 on CI machines: emulate as much of boxd.service's sandbox as works
# without it (capabilities, no new privileges, a read-only file system, a private /proc, no
# network) and run the end-to-end tests again against a daemon inside it.
echo "== pytest: end-to-end, the daemon inside boxd.service's sandbox"
BOXD_TEST_UNIT_SANDBOX=1 exec "$venv/bin/pytest" -raR tests/e2e
