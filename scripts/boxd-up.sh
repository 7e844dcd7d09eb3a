#!/usr/bin/env bash
# Set up boxd on this Debian 12 host and run the main job, in one go (as root, e.g. with sudo):
#   podman's REST service, the system bus with boxd's policy, the boxd daemon, the default box image
#   (built locally with debootstrap when no registry is reachable), and a box for the invoking user,
#   started and entered once to show it works. Idempotent: run it again at any time.
#
#   sudo scripts/boxd-up.sh [USER]      USER defaults to $SUDO_USER, else a demo user "boxd-demo"
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BOXD_VENV:-/opt/boxd-venv}
image=localhost/boxd-debian:12
socket=/run/podman/podman.sock
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "boxd-up: run as root: sudo $0" >&2; exit 1; }
bash "$repo/scripts/install-deps.sh"
systemd_pid1() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }

say "podman settings for boxes"
mkdir -p /etc/containers/containers.conf.d
conf=/etc/containers/containers.conf.d/50-boxd.conf
{
    echo "# Written by boxd-up: runc works on every cgroup layout (crun refuses hybrid ones)."
    echo "[engine]"
    echo 'runtime = "runc"'
    if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt 1048576 ]; then
        echo "# This host's hard limits are below podman's defaults."
        echo "[containers]"
        # podman's service runs with at most 32768 processes whatever the shell allows.
        nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
        echo "default_ulimits = [\"nofile=$(ulimit -Hn):$(ulimit -Hn)\", \"nproc=$nproc:$nproc\"]"
    fi
} >"$conf"
if [ ! -e /etc/containers/storage.conf ]; then
    # Boxes run in user namespaces; vfs is the driver that does that on every kernel and fs.
    printf '[storage]\ndriver = "vfs"\ngraphroot = "/var/lib/containers/storage"\nrunroot = "/run/containers/storage"\n' \
        >/etc/containers/storage.conf
fi
grep -qs ' /dev/mqueue ' /proc/mounts || { mkdir -p /dev/mqueue; mount -t mqueue mqueue /dev/mqueue; }

say "podman REST service at $socket"
ping() { curl -sf --unix-socket "$socket" http://d/v4.0.0/libpod/_ping >/dev/null 2>&1; }
if ! ping; then
    if systemd_pid1; then
        systemctl enable --now podman.socket
    else
        mkdir -p /run/podman /var/log/boxd
        setsid podman system service --time=0 "unix://$socket" >>/var/log/boxd/podman.log 2>&1 &
    fi
    for _ in $(seq 100); do ping && break; sleep 0.1; done
    ping || { echo "boxd-up: podman's service did not come up; see /var/log/boxd/podman.log" >&2; exit 1; }
fi

say "system bus with boxd's policy"
install -Dm644 "$repo/dbus/io.github.boxd1.conf" /usr/share/dbus-1/system.d/io.github.boxd1.conf
install -Dm644 "$repo/dbus/io.github.boxd1.service" /usr/share/dbus-1/system-services/io.github.boxd1.service
if busctl status org.freedesktop.DBus >/dev/null 2>&1; then
    busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null
elif systemd_pid1; then
    systemctl start dbus.service
else
    # A bus that died (e.g. with its session) leaves its socket and pid file behind.
    rm -f /run/dbus/system_bus_socket /run/dbus/pid
    mkdir -p /run/dbus
    dbus-daemon --system --fork
fi

say "polkit with boxd's actions and rules"
install -Dm644 "$repo"/polkit/io.github.boxd1.policy -t /usr/share/polkit-1/actions/
install -Dm644 "$repo"/polkit/50-io.github.boxd1.rules -t /usr/share/polkit-1/rules.d/
groupadd -f boxd
groupadd -f boxd-admin
if ! busctl status org.freedesktop.PolicyKit1 >/dev/null 2>&1; then
    if systemd_pid1; then
        systemctl start polkit.service
    else
        setsid /usr/lib/polkit-1/polkitd --no-debug >>/var/log/boxd/polkitd.log 2>&1 &
        for _ in $(seq 100); do busctl status org.freedesktop.PolicyKit1 >/dev/null 2>&1 && break; sleep 0.1; done
    fi
fi

say "boxd daemon"
mkdir -p /etc/boxd /var/lib/boxd /var/log/boxd
[ -e /etc/boxd/boxd.yaml ] || cat >/etc/boxd/boxd.yaml <<YAML
# boxd configuration; every key is optional (see docs/config.md).
podman_socket: $socket
default_image: $image
YAML
install -Dm644 "$repo/systemd/boxd.service" /etc/systemd/system/boxd.service
boxd --register-subids  # box owners' host id ranges into /etc/subuid and /etc/subgid (the unit does too)
install -Dm644 "$repo/docs/man/boxctl.1" -t /usr/local/share/man/man1/
install -Dm644 "$repo/docs/man/boxd.8" -t /usr/local/share/man/man8/
if systemd_pid1; then
    systemctl daemon-reload
    systemctl enable boxd.service
    systemctl restart boxd.service  # a new boxd version takes over; boxes keep running
else
    if pkill -f "^$venv/bin/python[0-9.]* /usr/local/bin/boxd --system"; then
        for _ in $(seq 100); do busctl status io.github.boxd1 >/dev/null 2>&1 || break; sleep 0.1; done
    fi
    setsid boxd --system >>/var/log/boxd/boxd.log 2>&1 &
    for _ in $(seq 100); do busctl status io.github.boxd1 >/dev/null 2>&1 && break; sleep 0.1; done
    busctl status io.github.boxd1 >/dev/null 2>&1 || { tail /var/log/boxd/boxd.log >&2; exit 1; }
fi

say "default image $image"
if ! curl -sf --unix-socket "$socket" "http://d/v4.0.0/libpod/images/$image/exists" >/dev/null; then
    echo "building it from Debian's packages with debootstrap (about a minute; no registry needed)"
    if ! boxctl image build-default; then
        # boxd's hardened unit (no network, few capabilities) cannot run debootstrap: build here.
        tarball=/var/cache/boxd/debian.tar
        mkdir -p /var/cache/boxd
        [ -e "$tarball" ] || sh "$repo/boxd/data/build-rootfs.sh" debian "$tarball"
        curl -sf --unix-socket "$socket" -X POST -H 'Content-Type: application/x-tar' \
            --data-binary "@$tarball" "http://d/v4.0.0/libpod/images/import?reference=$image" >/dev/null
    fi
fi

user=${1:-${SUDO_USER:-}}
if [ -z "$user" ] || [ "$user" = root ]; then
    user=boxd-demo
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
fi
usermod -aG boxd "$user"  # polkit lets members of boxd use their own boxes (see polkit/)
as_user() { runuser -u "$user" -- "$@"; }
say "a box for $user (their default box, $user-box)"
# Run from / : boxctl would otherwise try the caller's directory in the box.
cd /
as_user boxctl start 2>/dev/null || { as_user boxctl create && as_user boxctl start; }
as_user boxctl list
say "inside the box"
as_user boxctl run -- sh -c \
    'echo "I am $(id -un) on $(hostname), home $HOME; sudo in the box gives uid $(sudo -n id -u)"; head -1 /run/host/etc/os-release'
say "boxd is up. As $user:  boxctl enter   |   boxctl run CMD   |   boxctl list"
