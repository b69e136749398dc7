#!/bin/sh
# Run a command with private mounts, or enter a Debian system; for pfq-omatic's `system`
# module.
#
#   enter-system.sh exec ARGV...
#   enter-system.sh unpack TARBALL ROOT
#   enter-system.sh enter TARBALL ROOT STATUS [--bind SRC DST]... [--clone REPO DST]... -- ARGV...
#   enter-system.sh chroot ROOT [--bind SRC DST]... -- ARGV...
#
# pfq-omatic starts this in private mount and PID namespaces (util-linux unshare as root,
# `mmdebstrap --unshare-helper` otherwise), so every mount made here or by ARGV lives only
# in that namespace and goes with it, however the run ends. `enter` unpacks TARBALL at ROOT
# (an empty folder), runs ARGV with chroot into it and writes its exit status to STATUS
# (absent if entering failed); `chroot` enters a system unpacked before and exits with
# ARGV's status. DST paths are inside the system.
set -eu

# Mounts made below must not propagate back. Inside a chroot "/" is not a mount point and
# cannot be made private: then no mount visible here may be shared.
if ! mount --make-rprivate / 2>/dev/null && grep -q ' shared:' /proc/self/mountinfo; then
    echo "enter-system: mounts here are shared and cannot be made private" >&2
    exit 1
fi

what=$1
shift
if [ "$what" = exec ]; then
    exec "$@"
fi

unpack() {
    # /dev comes from the host; its nodes in the tarball cannot be made without root.
    tar -C "$2" --numeric-owner --xattrs --xattrs-include='*' --exclude='./dev/*' -xf "$1"
}

mount_basics() {
    mount -t proc proc "$1/proc"
    mount --rbind /sys "$1/sys"
    mount --rbind /dev "$1/dev"
}

case $what in
    unpack)
        unpack "$1" "$2"
        exit 0
        ;;
    chroot)
        root=$1
        shift
        mount_basics "$root"
        ;;
    enter)
        tarball=$1 root=$2 status=$3
        shift 3
        unpack "$tarball" "$root"
        mount_basics "$root"
        # The host's resolver, as for any chroot that must reach the archive.
        rm -f "$root/etc/resolv.conf"
        cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        # The site's own CA certificates (a proxy's, say), which update-ca-certificates
        # adds to the bundle now if the system has ca-certificates, or when it is installed.
        for cert in /usr/local/share/ca-certificates/*.crt; do
            [ -f "$cert" ] || continue
            mkdir -p "$root/usr/local/share/ca-certificates"
            cp "$cert" "$root/usr/local/share/ca-certificates/"
        done
        if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
            chroot "$root" /usr/sbin/update-ca-certificates >/dev/null
        fi
        ;;
    *)
        echo "enter-system: unknown mode $what" >&2
        exit 1
        ;;
esac

while [ "$1" != -- ]; do
    case $1 in
        --bind)
            mkdir -p "$root$3"
            mount --bind "$2" "$root$3"
            ;;
        --clone)
            git -c safe.directory='*' clone --quiet --no-hardlinks "$2" "$root$3"
            ;;
        *)
            echo "enter-system: unknown option $1" >&2
            exit 1
            ;;
    esac
    shift 3
done
shift

if [ "$what" = chroot ]; then
    exec chroot "$root" "$@"
fi
code=0
chroot "$root" "$@" || code=$?
echo "$code" >"$status"
