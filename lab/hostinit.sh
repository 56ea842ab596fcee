#!/bin/sh
# First process of a lab host. `lab up` starts it as
#   ip netns exec xa-NAME unshare --mount --uts --propagation private /bin/sh hostinit.sh
# so it runs in the host's own network, mount and UTS namespaces. It makes the host's private
# directories, starts the host's daemons, then stays as the host's anchor process: killing every
# process of the namespace is "pulling the plug".
#
# Environment (set by lab/cluster.py): LAB_HOST, LAB_ROLE (disk|cpu), LAB_STATE (the host's state
# dir under LAB_DIR), LAB_EMPTY (an empty file), LAB_ETC_HOSTS (the lab's /etc/hosts),
# LAB_STANDIN (dir with the aoe-discover/aoe-flush stand-ins), LAB_RESTORE_EXPORTS (script
# re-running a disk server's exports; skipped if missing), LAB_PRIVATE_DIRS (lines
# "MOUNTPOINT STATE_SUBDIR").
set -eu

echo $$ >"$LAB_STATE/anchor.pid"
log() { echo "hostinit[$LAB_HOST]: $*"; }

hostname "$LAB_HOST"
# The copies of the root namespace's mounts under /run include /run/netns/*: they would pin every
# other network namespace (other hosts', anyone's) for as long as this host lives.
# Only the topmost ones: a lazy umount takes the mounts below with it (a fleet adds hundreds). One
# may be gone by the time it is reached (a namespace deleted meanwhile): that is as good.
awk '$5 ~ "^/run(/|$)" { print $5 }' /proc/self/mountinfo | sort -u |
    awk '{ for (i = 1; i <= n; i++) if (index($0 "/", top[i] "/") == 1) next; top[++n] = $0; print }' |
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || ! mountpoint -q "$mnt" || { log "cannot unmount $mnt"; exit 1; }
    done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/sshd /run/lock /run/xenaoe/vblade

echo "$LAB_PRIVATE_DIRS" | while read -r target sub; do
    [ -n "$target" ] || continue
    mount --bind "$LAB_STATE/$sub" "$target"
done
mount --bind "$LAB_ETC_HOSTS" /etc/hosts
# A login shell's ~/.bashrc costs ~200 ms per SSH command; hosts have none.
if [ -e /root/.bashrc ]; then
    mount --bind "$LAB_EMPTY" /root/.bashrc
fi

if [ "$LAB_ROLE" = cpu ]; then
    # The AoE initiator stand-in (the lab kernel has no aoe driver): see lab/README.md.
    mount -t tmpfs -o mode=0755,nosuid tmpfs /dev/etherd
    mount --bind "$LAB_STANDIN/aoe-discover" /usr/sbin/aoe-discover
    mount --bind "$LAB_STANDIN/aoe-flush" /usr/sbin/aoe-flush
fi

/usr/sbin/sshd -f "$LAB_STATE/sshd/sshd_config" -E "$LAB_STATE/log/sshd.log"

if [ "$LAB_ROLE" = cpu ]; then
    # Debian 12's libvirtd does not start virtlogd by itself.
    virtlogd -d
    libvirtd -d
    n=0
    until [ -S /run/libvirt/libvirt-sock ]; do
        n=$((n + 1))
        if [ "$n" -gt 600 ]; then
            log "libvirtd did not create its socket in 30 s"
            exit 1
        fi
        sleep 0.05
    done
else
    mkdir -p /etc/xenaoe/exports /var/log/xenaoe /srv/xenaoe/volumes
    if [ -f "$LAB_RESTORE_EXPORTS" ]; then
        # Like a real disk server's boot: re-run every export configured in /etc/xenaoe/exports.
        if ! timeout 60 sh "$LAB_RESTORE_EXPORTS" </dev/null >>/var/log/xenaoe/restore-exports.log 2>&1
        then
            log "$LAB_RESTORE_EXPORTS failed, see /var/log/xenaoe/restore-exports.log"
        fi
    fi
fi

touch "$LAB_STATE/ready"
log "up"
exec sleep infinity
