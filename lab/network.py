"""The lab's links: two bridges in the root namespace, one network namespace per host.

Management: bridge xa-mgmt (10.213.0.1/24, the panel's side) and `mgmt0` in every host.
SAN: bridge xa-san, layer 2 only (no IPv4, no IPv6 link-local), MTU 9000, and `san0` in every host.
MAC addresses are derived from the host's address so that vblade MAC ACLs (`-m`) kept in a disk
server's /etc/xenaoe/exports stay valid across `lab down` / `lab up`.
"""
from __future__ import annotations

from pathlib import Path

from lab.system import ip_batch, link_exists, sh
from lab.topology import (
    MGMT_BRIDGE,
    MGMT_GATEWAY,
    MGMT_IFACE,
    MGMT_PREFIX,
    SAN_BRIDGE,
    SAN_IFACE,
    SAN_MTU,
    LabHost,
)


def mac_address(lab_host: LabHost, network: int) -> str:
    """02:0a:d5:NN:00:HH - locally administered; 0a:d5 is 10.213, NN the network, HH the host."""
    last = int(lab_host.address.rsplit(".", 1)[1])
    return f"02:0a:d5:{network:02x}:00:{last:02x}"


def ensure_bridges() -> None:
    commands = []
    if not link_exists(MGMT_BRIDGE):
        commands.append(f"link add {MGMT_BRIDGE} type bridge forward_delay 0")
    if not link_exists(SAN_BRIDGE):
        commands.append(f"link add {SAN_BRIDGE} type bridge forward_delay 0")
    commands += [
        f"addr replace {MGMT_GATEWAY}/{MGMT_PREFIX} dev {MGMT_BRIDGE}",
        f"link set {MGMT_BRIDGE} up",
        # Before `up`, so the SAN bridge never gets an IPv6 link-local address.
        f"link set {SAN_BRIDGE} addrgenmode none",
        f"link set {SAN_BRIDGE} mtu {SAN_MTU} up",
    ]
    ip_batch(commands)


def delete_bridges() -> None:
    ip_batch([f"link del {name}" for name in (MGMT_BRIDGE, SAN_BRIDGE) if link_exists(name)])


def create_host_network(lab_host: LabHost) -> None:
    """Namespace, veth pairs into both bridges, addresses; the namespace must not exist yet."""
    ns = lab_host.netns
    sh(["ip", "netns", "add", ns])
    ip_batch([
        f"link add {lab_host.mgmt_veth} type veth peer name {MGMT_IFACE} netns {ns}"
        f" address {mac_address(lab_host, 0)}",
        f"link add {lab_host.san_veth} mtu {SAN_MTU} type veth peer name {SAN_IFACE} netns {ns}"
        f" mtu {SAN_MTU} address {mac_address(lab_host, 1)}",
        f"link set {lab_host.mgmt_veth} addrgenmode none master {MGMT_BRIDGE} up",
        f"link set {lab_host.san_veth} addrgenmode none master {SAN_BRIDGE} up",
    ])
    inside = [
        "link set lo up",
        f"addr add {lab_host.address}/{MGMT_PREFIX} dev {MGMT_IFACE}",
        f"link set {MGMT_IFACE} up",
        f"link set {SAN_IFACE} addrgenmode none",
        f"link set {SAN_IFACE} up",
    ]
    ip_batch(inside, netns=ns)


def delete_host_network(lab_host: LabHost) -> None:
    """Remove the host's veths and namespace (its processes must be gone already)."""
    ip_batch([f"link del {name}" for name in (lab_host.mgmt_veth, lab_host.san_veth)
              if link_exists(name)])
    if Path("/run/netns", lab_host.netns).exists():
        sh(["ip", "netns", "del", lab_host.netns], check=False)


def host_network_ok(lab_host: LabHost) -> bool:
    return (
        Path("/run/netns", lab_host.netns).exists()
        and link_exists(lab_host.mgmt_veth)
        and link_exists(lab_host.san_veth)
    )
