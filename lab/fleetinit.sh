#!/bin/sh
# First process of a light fleet host (lab/fleet.py). `fleet up` starts it as
#   ip netns exec xf-NAME unshare --mount --uts --propagation private /bin/sh fleetinit.sh
# It becomes the host as a lab host does (lab/hostinit-common.sh), starts the host's only daemon,
# then stays as the host's anchor (`sleep infinity`).
#
# Environment: FLEET_HOST (name), FLEET_ROLE (cpu|disk|libvirt), FLEET_STATE (the host's state dir),
# FLEET_EMPTY (an empty file), FLEET_LIBVIRT (the shared libvirtd's directory: etc, lib, log, cache, run).
#   cpu, disk: sshd only; a CPU host's /run/libvirt is the shared libvirtd's, so that
#              qemu+libssh2:// to the host reaches that libvirtd through the host's own sshd.
#   libvirt:   the shared libvirtd, with private /etc/libvirt, /var/{lib,log,cache}/libvirt.
set -eu
# shellcheck source=lab/hostinit-common.sh
. "$(dirname -- "$0")/hostinit-common.sh"

become_host "$FLEET_HOST" "$FLEET_STATE" "$FLEET_EMPTY"
mkdir -p /run/sshd /run/libvirt

if [ "$FLEET_ROLE" = libvirt ]; then
    for pair in etc:/etc/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt run:/run/libvirt; do
        mount --bind "$FLEET_LIBVIRT/${pair%%:*}" "${pair#*:}"
    done
    libvirtd -d
    wait_for_libvirtd
else
    if [ "$FLEET_ROLE" = cpu ]; then
        mount --bind "$FLEET_LIBVIRT/run" /run/libvirt
    fi
    /usr/sbin/sshd -f "$FLEET_STATE/sshd_config" -E "$FLEET_STATE/sshd.log"
fi

touch "$FLEET_STATE/ready"
exec sleep infinity
