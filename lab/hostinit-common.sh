# hostinit-common.sh: the start every lab host shares, sourced by lab/hostinit.sh (a lab host) and
# lab/fleetinit.sh (a light fleet host), so a fix here is a fix to both (POSIX sh).
#
# Both run as the first process of a host, in its own network, mount and UTS namespaces
# (`ip netns exec NETNS unshare --mount --uts --propagation private /bin/sh SCRIPT`); the process
# stays as the host's anchor, and killing every process of the namespace is "pulling the plug".

# Log lines say which script and which host: "hostinit[cpu1]: ...". Set by become_host.
init_tag="${0##*/}"
init_tag="${init_tag%.sh}"

log() { echo "$init_tag: $*"; }

# become_host NAME STATE_DIR EMPTY_FILE: this process is the host NAME's anchor (its pid in
# STATE_DIR/anchor.pid), with the host's name, a /run of its own and no ~/.bashrc.
become_host() {
    init_tag="${init_tag}[$1]"
    echo $$ >"$2/anchor.pid"
    hostname "$1"
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
    # A login shell's ~/.bashrc costs ~200 ms per SSH command; hosts have none.
    if [ -e /root/.bashrc ]; then
        mount --bind "$3" /root/.bashrc
    fi
}

# wait_for_libvirtd: return once the libvirtd just started listens on its socket; exit after 30 s.
wait_for_libvirtd() {
    n=0
    until [ -S /run/libvirt/libvirt-sock ]; do
        n=$((n + 1))
        if [ "$n" -gt 600 ]; then
            log "libvirtd did not create its socket in 30 s"
            exit 1
        fi
        sleep 0.05
    done
}
