#!/usr/bin/env bash
# Install what boxd and its tests need on Debian 12: podman (+ runc), a D-Bus daemon, polkitd,
# debootstrap (the default image is built locally), and boxd itself in a venv at $BOXD_VENV with
# boxd/boxctl linked into /usr/local/bin. Idempotent; run as root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BOXD_VENV:-/opt/boxd-venv}

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run this as root (sudo $0)" >&2
    exit 1
fi

packages=(podman runc conmon dbus polkitd pkexec debootstrap uidmap busybox-static dash docker-registry
          python3 python3-venv curl ca-certificates systemd tmux xvfb pulseaudio
          desktop-file-utils x11-apps procps groff-base strace fish zsh)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's own Python, so that unprivileged users (the tests' real users) can run the venv too.
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
# A real (not editable) install: the tests' unprivileged users must be able to import boxd even
# when this checkout lives where they cannot read.
"$venv/bin/pip" install -q --disable-pip-version-check "$repo[test]"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$repo"
ln -sf "$venv/bin/boxd" /usr/local/bin/boxd
ln -sf "$venv/bin/boxctl" /usr/local/bin/boxctl
echo "install-deps: boxd $("$venv/bin/boxd" --version | cut -d' ' -f2) in $venv"
