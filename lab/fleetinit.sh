#!/bin/sh
# First process of a light fleet host (lab/fleet.py). `fleet up` starts it as
#   ip netns exec xf-NAME unshare --mount --uts --propagation private /bin/sh fleetinit.sh
# It starts the host's only daemon, then stays as the host's anchor (`sleep infinity`).
#
# Environment: FLEET_HOST (name), FLEET_ROLE (cpu|disk|libvirt), FLEET_STATE (the host's state dir),
# FLEET_EMPTY (an empty file), FLEET_LIBVIRT (the shared libvirtd's directory: etc, lib, log, cache, run).
#   cpu, disk: sshd only; a CPU host's /run/libvirt is the shared libvirtd's, so that
#              qemu+libssh:// to the host reaches that libvirtd through the host's own sshd.
#   libvirt:   the shared libvirtd, with private /etc/libvirt, /var/{lib,log,cache}/libvirt.
set -eu

echo $$ >"$FLEET_STATE/anchor.pid"
hostname "$FLEET_HOST"
# The copies of the root namespace's mounts under /run include /run/netns/*: they would pin every
# other network namespace for as long as this host lives (as lab/hostinit.sh explains).
# Only the topmost ones: a lazy umount takes the mounts below with it (a fleet adds hundreds). One
# may be gone by the time it is reached (a namespace deleted meanwhile): that is as good.
awk '$5 ~ "^/run(/|$)" { print $5 }' /proc/self/mountinfo | sort -u |
    awk '{ for (i = 1; i <= n; i++) if (index($0 "/", top[i] "/") == 1) next; top[++n] = $0; print }' |
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || ! mountpoint -q "$mnt" || { echo "fleetinit[$FLEET_HOST]: cannot unmount $mnt"; exit 1; }
    done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/sshd /run/libvirt
# A login shell's ~/.bashrc costs ~200 ms per SSH command; hosts have none.
if [ -e /root/.bashrc ]; then
    mount --bind "$FLEET_EMPTY" /root/.bashrc
fi

if [ "$FLEET_ROLE" = libvirt ]; then
    for pair in etc:/etc/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt run:/run/libvirt; do
        mount --bind "$FLEET_LIBVIRT/${pair%%:*}" "${pair#*:}"
    done
    libvirtd -d
    n=0
    until [ -S /run/libvirt/libvirt-sock ]; do
        n=$((n + 1))
        if [ "$n" -gt 600 ]; then
            echo "fleetinit[$FLEET_HOST]: libvirtd did not create its socket in 30 s"
            exit 1
        fi
        sleep 0.05
    done
else
    if [ "$FLEET_ROLE" = cpu ]; then
        mount --bind "$FLEET_LIBVIRT/run" /run/libvirt
    fi
    /usr/sbin/sshd -f "$FLEET_STATE/sshd_config" -E "$FLEET_STATE/sshd.log"
fi

touch "$FLEET_STATE/ready"
exec sleep infinity
