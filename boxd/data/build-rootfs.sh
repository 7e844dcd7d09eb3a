#!/bin/sh
# Build a box root filesystem tarball without any registry (boxd runs this for
# BuildDefaultImage; the tests use it too).
#   build-rootfs.sh debian OUT.tar   Debian bookworm minbase via debootstrap (~25 s, cached by caller)
#   build-rootfs.sh busybox OUT.tar  a tiny image with only busybox: no useradd, no sudo (the busybox path)
set -eu
kind=$1
out=$2
work=$(mktemp -d /var/tmp/boxd-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
case "$kind" in
debian)
    mirror=${BOXD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    # debootstrap's "I: ..." lines go to stdout as progress; everything goes to the log.
    # One pipeline, no background job to follow: its status travels through a file
    # because POSIX sh has no pipefail.
    { if debootstrap --variant=minbase \
            --include=sudo,libcap2-bin,procps,passwd,tzdata,bash,util-linux \
            bookworm "$work/root" "$mirror" 2>&1; then
          echo 0 >"$work/status"
      else
          echo $? >"$work/status"
      fi
    } | tee "$work/log" | { grep --line-buffered '^I: ' || true; }
    [ "$(cat "$work/status" 2>/dev/null)" = 0 ] || { tail -20 "$work/log" >&2; exit 1; }
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    ;;
busybox)
    bb=$(command -v busybox)
    mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp" "$work/root/root" "$work/root/home"
    cp "$bb" "$work/root/bin/busybox"
    for applet in $("$bb" --list); do
        [ -e "$work/root/bin/$applet" ] || ln -s busybox "$work/root/bin/$applet"
    done
    ln -s bin "$work/root/sbin"
    mkdir -p "$work/root/usr"; ln -s ../bin "$work/root/usr/bin"; ln -s ../bin "$work/root/usr/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/root/etc/passwd"
    printf 'root:x:0:\n' >"$work/root/etc/group"
    printf 'root:*::0:::::\n' >"$work/root/etc/shadow"
    chmod 1777 "$work/root/tmp"
    ;;
*)
    echo "usage: $0 debian|busybox OUT.tar" >&2; exit 2 ;;
esac
tar -C "$work/root" --numeric-owner -cf "$out.part" .
mv "$out.part" "$out"
