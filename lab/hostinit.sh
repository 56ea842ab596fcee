#!/bin/sh
# First process of a lab host. `lab up` starts it as
#   ip netns exec xa-NAME unshare --mount --uts --propagation private /bin/sh hostinit.sh
# so it runs in the host's own network, mount and UTS namespaces. It becomes the host (the start
# every lab host shares: lab/hostinit-common.sh), makes the host's private directories, starts the
# host's daemons, then stays as the host's anchor process: killing every process of the namespace
# is "pulling the plug".
#
# Environment (set by lab/cluster.py): LAB_HOST, LAB_ROLE (disk|cpu), LAB_STATE (the host's state
# dir under LAB_DIR), LAB_EMPTY (an empty file), LAB_ETC_HOSTS (the lab's /etc/hosts),
# LAB_STANDIN (dir with the aoe-discover/aoe-flush stand-ins), LAB_RESTORE_EXPORTS (script
# re-running a disk server's exports; skipped if missing), LAB_PRIVATE_DIRS (lines
# "MOUNTPOINT STATE_SUBDIR").
set -eu
# shellcheck source=lab/hostinit-common.sh
. "$(dirname -- "$0")/hostinit-common.sh"

become_host "$LAB_HOST" "$LAB_STATE" "$LAB_EMPTY"
mkdir -p /run/sshd /run/lock /run/xenaoe/vblade

echo "$LAB_PRIVATE_DIRS" | while read -r target sub; do
    [ -n "$target" ] || continue
    mount --bind "$LAB_STATE/$sub" "$target"
done
mount --bind "$LAB_ETC_HOSTS" /etc/hosts

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
    wait_for_libvirtd
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
