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
    CLIENT,
    GUEST_BRIDGE,
    GUEST_CIDR,
    GUEST_SEGMENT,
    GUEST_UPLINK,
    MGMT_BRIDGE,
    MGMT_GATEWAY,
    MGMT_IFACE,
    MGMT_PREFIX,
    SAN_BRIDGE,
    SAN_IFACE,
    SAN_MTU,
    LabBmc,
    LabHost,
)


def mac_address(lab_host: LabHost, network: int) -> str:
    """02:0a:d5:NN:00:HH - locally administered; 0a:d5 is 10.213, NN the network (0 management,
    1 SAN, 2 BMC, 3 the guests' segment), HH the host."""
    return f"02:0a:d5:{network:02x}:00:{lab_host.last_octet:02x}"


def ensure_bridges() -> None:
    commands = []
    if not link_exists(MGMT_BRIDGE):
        commands.append(f"link add {MGMT_BRIDGE} type bridge forward_delay 0")
    if not link_exists(SAN_BRIDGE):
        commands.append(f"link add {SAN_BRIDGE} type bridge forward_delay 0")
    if not link_exists(GUEST_SEGMENT):
        commands.append(f"link add {GUEST_SEGMENT} type bridge forward_delay 0")
    commands += [
        f"link set {GUEST_SEGMENT} addrgenmode none",
        f"link set {GUEST_SEGMENT} up",
        f"addr replace {MGMT_GATEWAY}/{MGMT_PREFIX} dev {MGMT_BRIDGE}",
        f"link set {MGMT_BRIDGE} up",
        # Before `up`, so the SAN bridge never gets an IPv6 link-local address.
        f"link set {SAN_BRIDGE} addrgenmode none",
        f"link set {SAN_BRIDGE} mtu {SAN_MTU} up",
    ]
    ip_batch(commands)


def delete_bridges() -> None:
    ip_batch([f"link del {name}" for name in (MGMT_BRIDGE, SAN_BRIDGE, GUEST_SEGMENT) if link_exists(name)])


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
    if lab_host.role == "cpu":
        # The guests' bridge, as a real CPU server has one per network, uplinked to the segment.
        ip_batch([
            f"link add {lab_host.guest_veth} type veth peer name {GUEST_UPLINK} netns {ns}"
            f" address {mac_address(lab_host, 3)}",
            f"link set {lab_host.guest_veth} addrgenmode none master {GUEST_SEGMENT} up",
        ])
        inside += [
            f"link add {GUEST_BRIDGE} type bridge forward_delay 0",
            f"link set {GUEST_BRIDGE} addrgenmode none",
            f"link set {GUEST_UPLINK} addrgenmode none master {GUEST_BRIDGE} up",
            f"link set {GUEST_BRIDGE} up",
        ]
    ip_batch(inside, netns=ns)


def delete_host_network(lab_host: LabHost) -> None:
    """Remove the host's veths and namespace (its processes must be gone already)."""
    ip_batch([f"link del {name}" for name in (lab_host.mgmt_veth, lab_host.san_veth, lab_host.guest_veth)
              if link_exists(name)])
    if Path("/run/netns", lab_host.netns).exists():
        sh(["ip", "netns", "del", lab_host.netns], check=False)


def host_network_ok(lab_host: LabHost) -> bool:
    return (
        Path("/run/netns", lab_host.netns).exists()
        and link_exists(lab_host.mgmt_veth)
        and link_exists(lab_host.san_veth)
    )


# --- partitions: the host keeps running, one of its links is cut ----------------------------

IFF_UP = 0x1


def _link_up(name: str) -> bool:
    try:
        return bool(int(Path("/sys/class/net", name, "flags").read_text(), 16) & IFF_UP)
    except (OSError, ValueError):
        return False


def _veth(lab_host: LabHost, link: str) -> str:
    return {"mgmt": lab_host.mgmt_veth, "san": lab_host.san_veth}[link]


def partition(lab_host: LabHost, link: str = "mgmt") -> None:
    """Set the root-side end of the host's management (or SAN) veth down: the host sees no carrier
    on that interface, packets to it go nowhere. Its other link and its processes are left alone."""
    sh(["ip", "link", "set", _veth(lab_host, link), "down"])


def heal(lab_host: LabHost) -> None:
    for link in ("mgmt", "san"):
        if is_partitioned(lab_host, link):
            sh(["ip", "link", "set", _veth(lab_host, link), "up"])


def is_partitioned(lab_host: LabHost, link: str = "mgmt") -> bool:
    """Derived from the link itself (no state file to drift): the veth exists but is down."""
    return link_exists(_veth(lab_host, link)) and not _link_up(_veth(lab_host, link))


# --- BMCs: one small namespace per BMC, on the management bridge only -----------------------

def create_bmc_network(bmc: LabBmc) -> None:
    ns = bmc.netns
    sh(["ip", "netns", "add", ns])
    ip_batch([
        f"link add {bmc.mgmt_veth} type veth peer name {MGMT_IFACE} netns {ns} address {bmc.mac}",
        f"link set {bmc.mgmt_veth} addrgenmode none master {MGMT_BRIDGE} up",
    ])
    ip_batch([
        "link set lo up",
        f"addr add {bmc.address}/{MGMT_PREFIX} dev {MGMT_IFACE}",
        f"link set {MGMT_IFACE} up",
    ], netns=ns)


def delete_bmc_network(bmc: LabBmc) -> None:
    if link_exists(bmc.mgmt_veth):
        sh(["ip", "link", "del", bmc.mgmt_veth], check=False)
    if Path("/run/netns", bmc.netns).exists():
        sh(["ip", "netns", "del", bmc.netns], check=False)


def bmc_network_ok(bmc: LabBmc) -> bool:
    return Path("/run/netns", bmc.netns).exists() and _link_up(bmc.mgmt_veth)


def cut_bmc_link(bmc: LabBmc) -> None:
    """A BMC without power: its address stops answering at all (not even ICMP unreachable)."""
    if link_exists(bmc.mgmt_veth):
        sh(["ip", "link", "set", bmc.mgmt_veth, "down"])


# --- the client on the guests' network ------------------------------------------------------------

def create_client_network() -> None:
    """The client's namespace and its link into the guests' segment (idempotent)."""
    if client_network_ok():
        return
    delete_client_network()
    prefix = GUEST_CIDR.split("/")[1]
    sh(["ip", "netns", "add", CLIENT.netns])
    ip_batch([
        f"link add {CLIENT.veth} type veth peer name eth0 netns {CLIENT.netns} address 02:0a:d6:00:00:01",
        f"link set {CLIENT.veth} addrgenmode none master {GUEST_SEGMENT} up",
    ])
    ip_batch(["link set lo up", f"addr add {CLIENT.address}/{prefix} dev eth0", "link set eth0 up"],
             netns=CLIENT.netns)


def delete_client_network() -> None:
    if link_exists(CLIENT.veth):
        sh(["ip", "link", "del", CLIENT.veth], check=False)
    if Path("/run/netns", CLIENT.netns).exists():
        sh(["ip", "netns", "del", CLIENT.netns], check=False)


def client_network_ok() -> bool:
    return Path("/run/netns", CLIENT.netns).exists() and _link_up(CLIENT.veth)
