#!/bin/sh
# boxd's entry point for every box. boxd bind-mounts this file read-only at /run/boxd/init and runs it
# at every start of the box, so a newer boxd or a changed box config reaches existing boxes on their
# next start without re-creating them. POSIX sh only: it must run under dash and busybox ash, in any
# distro's image.
#
# Protocol with the daemon (read from the container log): one line "boxd-init: ready" when the box is
# usable (followed by the start token boxd put in the config), or "boxd-init: error: <why>" before exiting non-zero.
# The ready line also goes, as "ready <token>", into the FIFO "ready" next to the config, when there is one.
#
# The box's current config is a generated sh file, sourced below. It sets BOXD_* variables and defines
# boxd_apply(), which calls boxd_volume SRC DST MODE and boxd_env NAME VALUE once per item, then
# boxd_packages NAME... and boxd_hook COMMAND.

set -u
umask 022

BOXD_CONFIG=${BOXD_CONFIG:-/run/boxd/config/box.conf}
HOST=/run/host

say() { printf 'boxd-init: %s\n' "$*"; }
fail() { printf 'boxd-init: error: %s\n' "$*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# The mount points (field 5 of mountinfo; boxd's paths never contain spaces), read once: dash reads
# a file a byte at a time, and a loop over mountinfo per check cost ~5 ms each. Our own mounts are
# noted as they are made.
MOUNTS=
load_mounts() {
    if have cut; then
        MOUNTS=$(cut -d' ' -f5 /proc/self/mountinfo)
    else
        MOUNTS=$(while read -r _ _ _ _ point _; do printf '%s\n' "$point"; done </proc/self/mountinfo)
    fi
}

is_mounted() {
    case "
$MOUNTS
" in
    *"
$1
"*) return 0 ;;
    esac
    return 1
}

bind_mount() {  # bind_mount SRC DST: an rbind, noted
    mount -o rbind "$1" "$2" && MOUNTS="$MOUNTS
$2"
}

# Resolve an absolute symlink found under /run/host so that it points into /run/host again.
host_path() {
    path=$HOST$1
    hops=0
    while [ -L "$path" ] && [ $hops -lt 8 ]; do
        target=$(readlink "$path")
        case $target in
        /*) path=$HOST$target ;;
        *) path=${path%/*}/$target ;;
        esac
        hops=$((hops + 1))
    done
    printf '%s\n' "$path"
}

bind_from_host() {  # bind_from_host PATH [ro]: host's PATH at the same place in the box, if present
    src=$HOST$1
    [ -e "$src" ] || return 0
    is_mounted "$1" && return 0
    if [ -d "$src" ]; then
        mkdir -p "$1" 2>/dev/null || return 0
    else
        mkdir -p "${1%/*}" 2>/dev/null && { [ -e "$1" ] || : >"$1"; } 2>/dev/null || return 0
    fi
    bind_mount "$src" "$1" 2>/dev/null || { say "warning: could not share $1 from the host"; return 0; }
    if [ "${2:-}" = ro ]; then
        mount -o remount,bind,ro "$1" 2>/dev/null || true
    fi
}

# -- host files: DNS, hosts, time zone --------------------------------------------------------------

link_resolv_conf() {
    target=$(host_path /etc/resolv.conf)
    [ -e "$target" ] || { say "warning: the host has no /etc/resolv.conf"; return 0; }
    [ "$(readlink /etc/resolv.conf 2>/dev/null)" = "$target" ] && return 0
    rm -f /etc/resolv.conf && ln -s "$target" /etc/resolv.conf || fail "cannot link /etc/resolv.conf to the host's"
}

write_hosts() {
    # The host's hosts plus the box's own name, so sudo and X11 never stall on resolving it.
    src=$(host_path /etc/hosts)
    if [ -f /etc/hosts ] && [ -f "$src" ] && [ ! "$src" -nt /etc/hosts ] && grep -q "boxd: $BOXD_HOSTNAME\$" /etc/hosts; then
        return 0
    fi
    {
        [ -f "$src" ] && cat "$src"
        printf '127.0.1.1\t%s\t# boxd: %s\n' "$BOXD_HOSTNAME" "$BOXD_HOSTNAME"
    } >/etc/hosts.boxd-new && mv -f /etc/hosts.boxd-new /etc/hosts || fail "cannot write /etc/hosts"
}

link_timezone() {
    target=$(host_path /etc/localtime)
    [ -e "$target" ] || return 0
    [ "$(readlink /etc/localtime 2>/dev/null)" = "$target" ] && return 0
    rm -f /etc/localtime && ln -s "$target" /etc/localtime || fail "cannot link /etc/localtime to the host's"
    case $target in
    */zoneinfo/*) printf '%s\n' "${target#*/zoneinfo/}" >/etc/timezone 2>/dev/null || true ;;
    esac
}

sync_host_files() {
    link_resolv_conf
    write_hosts
    link_timezone
}

# -- the user -------------------------------------------------------------------------------------

passwd_field() {  # passwd_field FILE KEY_FIELD KEY OUT_FIELD
    awk -F: -v k="$3" -v f="$2" -v o="$4" '$f == k { print $o; exit }' "$1" 2>/dev/null
}

pick_shell() {
    for candidate in "$BOXD_SHELL" /bin/bash /bin/sh; do
        [ -x "$candidate" ] && { printf '%s\n' "$candidate"; return; }
    done
}

ensure_group() {
    existing=$(passwd_field /etc/group 3 "$BOXD_GID" 1)
    if [ -n "$existing" ]; then
        BOXD_GROUP=$existing
        return 0
    fi
    if [ -n "$(passwd_field /etc/group 1 "$BOXD_GROUP" 3)" ]; then
        BOXD_GROUP=boxd-$BOXD_GID  # the name is taken by another gid in this image
    fi
    if have groupadd; then
        groupadd -g "$BOXD_GID" "$BOXD_GROUP"
    elif have addgroup; then
        addgroup -g "$BOXD_GID" "$BOXD_GROUP"
    else
        printf '%s:x:%s:\n' "$BOXD_GROUP" "$BOXD_GID" >>/etc/group
    fi || fail "cannot create group $BOXD_GROUP ($BOXD_GID)"
}

remove_user() {
    # -f: the box shares the host's pid namespace, so the user's host processes are visible.
    if have userdel; then userdel -f "$1"; elif have deluser; then deluser "$1"; else
        sed -i "/^$1:/d" /etc/passwd /etc/shadow 2>/dev/null
    fi >/dev/null 2>&1
}

ensure_user() {
    shell=$(pick_shell)
    wanted="$BOXD_USER:$BOXD_UID:$BOXD_GID:$BOXD_HOME:$shell"
    current=$(awk -F: -v u="$BOXD_USER" '$1 == u { print $1 ":" $3 ":" $4 ":" $6 ":" $7; exit }' /etc/passwd)
    [ "$current" = "$wanted" ] && return 0
    case $current in
    "$BOXD_USER:$BOXD_UID:"*)
        # Same name and uid (a changed shell, or podman's keep-id entry): fix group, home and
        # shell in place; no tool, no process checks, no chown of the home.
        awk -F: -v OFS=: -v u="$BOXD_USER" -v g="$BOXD_GID" -v h="$BOXD_HOME" -v s="$shell" \
            '$1 == u { $4 = g; $6 = h; $7 = s } { print }' /etc/passwd >/etc/passwd.boxd-new &&
            cat /etc/passwd.boxd-new >/etc/passwd && rm -f /etc/passwd.boxd-new ||
            fail "cannot update user $BOXD_USER in the box"
        return 0
        ;;
    esac
    # Whatever holds our name or our uid in the image gives way (never `usermod -u`: it would chown
    # the home, which is the host's).
    [ -n "$current" ] && remove_user "$BOXD_USER"
    other=$(passwd_field /etc/passwd 3 "$BOXD_UID" 1)
    [ -n "$other" ] && remove_user "$other"
    if have useradd; then
        out=$(useradd --no-create-home --uid "$BOXD_UID" --gid "$BOXD_GID" \
            --home-dir "$BOXD_HOME" --shell "$shell" "$BOXD_USER" 2>&1)
    elif have adduser; then
        out=$(adduser -D -H -u "$BOXD_UID" -G "$BOXD_GROUP" -h "$BOXD_HOME" -s "$shell" \
            "$BOXD_USER" 2>&1)
    else
        out=$(printf '%s:x:%s:%s::%s:%s\n' "$BOXD_USER" "$BOXD_UID" "$BOXD_GID" "$BOXD_HOME" \
            "$shell" 2>&1 >>/etc/passwd)
    fi || fail "cannot create user $BOXD_USER ($BOXD_UID) in the box: $out"
}

add_to_group() {  # add_to_group GROUP: the user becomes a member of an existing GROUP
    members=$(passwd_field /etc/group 1 "$1" 4)
    case ",$members," in
    *",$BOXD_USER,"*) ;;
    *) sed -i "s/^\\($1:[^:]*:[^:]*:\\)\\(.*\\)\$/\\1\\2${members:+,}$BOXD_USER/" /etc/group ;;
    esac
}

join_host_groups() {
    # The owner's host groups, which boxd maps into the box with the same gids: the user is in
    # them here too, under the box's name for that gid where it has one (video, kvm...).
    for entry in ${BOXD_GROUPS:-}; do
        gid=${entry##*:}
        group=$(passwd_field /etc/group 3 "$gid" 1)
        if [ -z "$group" ]; then
            group=${entry%:*}
            [ -z "$(passwd_field /etc/group 1 "$group" 3)" ] || group=host-$group
            printf '%s:x:%s:\n' "$group" "$gid" >>/etc/group || fail "cannot add group $group ($gid)"
        fi
        add_to_group "$group"
    done
}

ensure_sudo() {
    for group in sudo wheel; do
        if grep -q "^$group:" /etc/group; then
            add_to_group "$group"
        fi
    done
    if [ -d /etc/sudoers.d ]; then
        printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$BOXD_USER" >/etc/sudoers.d/boxd.new &&
            chmod 0440 /etc/sudoers.d/boxd.new && mv -f /etc/sudoers.d/boxd.new /etc/sudoers.d/boxd ||
            fail "cannot write /etc/sudoers.d/boxd"
    fi
}

# -- what the host shares ---------------------------------------------------------------------------

share_system_bus() {
    # The host's system bus where programs look for it, as on the host (busctl, gdbus...);
    # sessions also get DBUS_SYSTEM_BUS_ADDRESS. A box with a bus of its own keeps it.
    [ -S "$HOST/run/dbus/system_bus_socket" ] || return 0
    [ "$(readlink /run/dbus/system_bus_socket 2>/dev/null)" = "$HOST/run/dbus/system_bus_socket" ] && return 0
    [ -S /run/dbus/system_bus_socket ] && return 0
    mkdir -p /run/dbus && rm -f /run/dbus/system_bus_socket &&
        ln -s "$HOST/run/dbus/system_bus_socket" /run/dbus/system_bus_socket ||
        say "warning: could not link the host's system bus"
}

share_host_paths() {
    # The Kerberos KCM socket, like Toolbx; ssh-agent, Wayland, PipeWire/Pulse and the session
    # bus live in /tmp or the runtime dir below.
    for path in /tmp /etc/machine-id /var/log/journal /run/systemd/journal /media /mnt /srv \
        /run/media /var/mnt /run/udev/data /run/.heim_org.h5l.kcm-socket; do
        bind_from_host "$path"
    done
    if [ -d "$HOST/run/user/$BOXD_UID" ]; then
        bind_from_host "/run/user/$BOXD_UID"
    fi
}

# -- the box's own config: extra volumes and environment -------------------------------------------

BOXD_ENV_FILE=/etc/profile.d/boxd-env.sh

boxd_volume() {  # boxd_volume HOST_PATH BOX_PATH ro|rw
    src=$HOST$1
    [ -e "$src" ] || { say "warning: volume source $1 does not exist on the host; skipped"; return 0; }
    if [ -d "$src" ]; then mkdir -p "$2"; else mkdir -p "${2%/*}" && { [ -e "$2" ] || : >"$2"; }; fi ||
        fail "cannot create mount point $2"
    is_mounted "$2" || bind_mount "$src" "$2" || fail "cannot mount $1 at $2"
    if [ "$3" = ro ]; then
        mount -o remount,bind,ro "$2" || fail "cannot make $2 read-only"
    fi
}

boxd_env() {  # boxd_env NAME VALUE: exported in login shells; boxd passes it to sessions itself
    value=$(printf '%s' "$2" | sed "s/'/'\\\\''/g")
    printf "export %s='%s'\n" "$1" "$value" >>"$BOXD_ENV_FILE.new"
}

package_installed() {
    if have dpkg-query; then dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
    elif have rpm; then rpm -q "$1" >/dev/null 2>&1
    elif have apk; then apk info -e "$1" >/dev/null 2>&1
    elif have pacman; then pacman -Q "$1" >/dev/null 2>&1
    else return 1
    fi
}

boxd_packages() {  # boxd_packages NAME...: install what is missing with the box's package manager
    missing=""
    for package in "$@"; do
        package_installed "$package" || missing="$missing $package"
    done
    [ -n "$missing" ] || return 0
    say "installing packages:$missing"
    # Package names are validated by boxd (no spaces or shell characters): split on purpose.
    # shellcheck disable=SC2086
    if have apt-get; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    elif have dnf; then dnf install -y $missing
    elif have apk; then apk add $missing
    elif have pacman; then pacman -Sy --noconfirm $missing
    elif have zypper; then zypper --non-interactive install $missing
    else fail "cannot install$missing: boxd knows no package manager in this box"
    fi || fail "installing$missing failed (see the box's log)"
}

boxd_hook() {  # boxd_hook COMMAND: run as root at every start
    sh -c "$1" || fail "the start hook failed: $1"
}

apply_box_config() {
    : >"$BOXD_ENV_FILE.new" || fail "cannot write $BOXD_ENV_FILE"
    boxd_apply
    mv -f "$BOXD_ENV_FILE.new" "$BOXD_ENV_FILE"
}

write_profile() {
    printf 'name=%s\nboxd_version=%s\n' "$BOXD_NAME" "$BOXD_VERSION" >/run/.boxdenv
    # Login shells in the box read this: the box's name in the prompt, and the container
    # sequences VTE terminals (Ptyxis, GNOME Terminal) use to know a tab is inside a box.
    cat >/etc/profile.d/boxd.sh.new <<'EOF'
# Written by boxd at every start of this box; changes here are lost.
BOXD_BOX=$(sed -n 's/^name=//p' /run/.boxdenv 2>/dev/null)
export BOXD_BOX
export container="${container:-oci}"
case $- in
*i*)
    if [ -t 1 ] && [ -n "${VTE_VERSION:-}${BOXD_TERMINAL_SEQUENCES:-}" ]; then
        printf '\033]777;container;push;%s;boxd;%s\033\\' "$BOXD_BOX" "$(id -u)"
        printf '\033]3008;start=boxd-%s;type=container;container=%s\033\\' "$$" "$BOXD_BOX"
        boxd_leave() {
            printf '\033]3008;end=boxd-%s\033\\' "$$"
            printf '\033]777;container;pop;;;%s\033\\' "$(id -u)"
        }
        trap boxd_leave EXIT
    fi
    if [ -n "${BASH_VERSION:-}" ]; then
        # ~/.bashrc sets PS1 after this file: mark the prompt before each showing instead.
        PROMPT_COMMAND='case "$PS1" in "⬢ "*) ;; *) PS1="⬢ $PS1" ;; esac'"${PROMPT_COMMAND:+;$PROMPT_COMMAND}"
    else
        PS1="⬢ ${PS1:-\$ }"
    fi
    ;;
esac
EOF
    mv -f /etc/profile.d/boxd.sh.new /etc/profile.d/boxd.sh
}

# -- main -----------------------------------------------------------------------------------------

[ -r "$BOXD_CONFIG" ] || fail "box config $BOXD_CONFIG is missing (was the box created by boxd?)"
# shellcheck source=/dev/null
. "$BOXD_CONFIG"
[ -d "$HOST/etc" ] || fail "the host's file system is not shared at $HOST"
mkdir -p /etc/profile.d

load_mounts
sync_host_files
ensure_group
ensure_user
ensure_sudo
join_host_groups
share_host_paths
share_system_bus
apply_box_config
write_profile

trap 'exit 0' TERM INT HUP
say "ready ${BOXD_START_TOKEN:-}"
# And at once through boxd's FIFO next to the config (podman passes log lines on only every
# quarter second). A read-write open never blocks, even with nobody reading; not `exec`: a
# failed redirection must not end this shell.
ready_pipe=${BOXD_CONFIG%/*}/ready
if [ -p "$ready_pipe" ]; then
    printf 'ready %s\n' "${BOXD_START_TOKEN:-}" 2>/dev/null 1<>"$ready_pipe" || :
fi

# Stay up as the box's main process; now and then follow host changes of DNS, hosts and time zone.
while :; do
    sleep "${BOXD_SYNC_INTERVAL:-15}" &
    wait $!
    sync_host_files
done
