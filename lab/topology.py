"""The lab cluster's fixed shape: names, addresses and where each host keeps its state.

The names are part of the project's contract (tests, the demo and docs use them), so they are
constants here, not configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.conf import settings

Role = Literal["disk", "cpu"]

MGMT_BRIDGE = "xa-mgmt"
SAN_BRIDGE = "xa-san"
MGMT_GATEWAY = "10.213.0.1"
MGMT_PREFIX = 24
SAN_MTU = 9000
NETNS_PREFIX = "xa-"
# A name for the root network namespace in /run/netns, so that a BMC's power hook (which runs in
# the BMC's namespace) can step back into it to rebuild a host's links (see lab/bmc.py).
ROOT_NETNS = f"{NETNS_PREFIX}root"
BMC_USER = "xenaoe"
BMC_PORT = 623

# Inside every host: the names the panel's host records use.
MGMT_IFACE = "mgmt0"
SAN_IFACE = "san0"

# The guests' network: one layer-2 segment (a bridge in the root namespace, no address: the panel's
# machine does not join it) that every CPU host's bridge GUEST_BRIDGE is plugged into, and a client
# namespace on it from which tests and the demo's user reach the guests by address.
GUEST_SEGMENT = "xa-guest"
GUEST_BRIDGE = "br-guest"  # what the panel's network "lab" names: the same on every CPU host
GUEST_UPLINK = "guest0"  # a CPU host's port into the segment
GUEST_CIDR = "10.214.0.0/24"
GUEST_GATEWAY = "10.214.0.1"  # the client's address (it routes nowhere: the lab stays closed)
GUEST_POOL = ("10.214.0.100", "10.214.0.199")
GUEST_NETWORK = "lab"

REPO_DIR = Path(__file__).resolve().parent.parent
LAB_CODE_DIR = Path(__file__).resolve().parent

# Where the panel's own drivers put things on a host (see drivers/); the lab only makes them private.
VOLUME_DIR = "/srv/xenaoe/volumes"

# Host paths made private per host, and the directory under the host's state dir backing each one.
PRIVATE_DIRS: dict[str, str] = {
    "/root/.ssh": "root-ssh",
    "/etc/libvirt": "etc-libvirt",
    "/var/lib/libvirt": "var-lib-libvirt",
    "/var/log/libvirt": "var-log-libvirt",
    "/var/cache/libvirt": "var-cache-libvirt",
    "/etc/xenaoe": "etc-xenaoe",
    "/var/log/xenaoe": "var-log-xenaoe",
    "/srv/xenaoe": "srv-xenaoe",
}


class _OnTheManagementNetwork:
    """A namespace of its own with a link to the management bridge, named after `name`."""

    name: str

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def mgmt_veth(self) -> str:
        """Root-namespace end of the management link (<= 15 characters)."""
        return f"{NETNS_PREFIX}{self.name}-m"


@dataclass(frozen=True)
class LabHost(_OnTheManagementNetwork):
    name: str
    role: Role
    address: str
    aoe_shelf: int | None = None

    @property
    def san_veth(self) -> str:
        return f"{NETNS_PREFIX}{self.name}-s"

    @property
    def guest_veth(self) -> str:
        """Root-namespace end of a CPU host's link into the guests' segment."""
        return f"{NETNS_PREFIX}{self.name}-g"

    @property
    def libvirt_uri(self) -> str | None:
        if self.role != "cpu":
            return None
        ssh_dir = lab_dir() / "ssh"
        # libssh2 (not the ssh binary) because it takes a known_hosts file in the URI: the panel
        # then verifies host keys against its own file, as drivers/ssh.py does. Not libssh: with
        # libvirt 9.0 its replies over ~10 KB (capabilities, domain XML, stats) wait 5-10 s for
        # libvirt's keepalive to wake the client (docs/lab.md).
        return (
            f"qemu+libssh2://root@{self.address}/system"
            f"?keyfile={ssh_dir / 'id_ed25519'}"
            f"&known_hosts={ssh_dir / 'known_hosts'}"
            "&known_hosts_verify=normal&sshauth=privkey"
        )

    @property
    def state_dir(self) -> Path:
        return lab_dir() / "hosts" / self.name

    @property
    def last_octet(self) -> int:
        return int(self.address.rsplit(".", 1)[1])

    @property
    def san_mac(self) -> str:
        """Fixed (see lab/network.py): vblade ACLs and storage fencing name hosts by it."""
        return f"02:0a:d5:01:00:{self.last_octet:02x}"

    @property
    def bmc(self) -> LabBmc | None:
        """CPU hosts have a BMC (IPMI over LAN) on the management network; disk servers do not."""
        return LabBmc(self) if self.role == "cpu" else None


@dataclass(frozen=True)
class LabBmc(_OnTheManagementNetwork):
    """The BMC of a lab host: ipmi_sim in its own network namespace on the management bridge, at
    the host's address + 100 (cpu1 10.213.0.21 -> 10.213.0.121)."""

    host: LabHost

    @property
    def name(self) -> str:
        return f"bmc-{self.host.name}"

    @property
    def address(self) -> str:
        return self.host.address.rsplit(".", 1)[0] + f".{self.host.last_octet + 100}"

    @property
    def mac(self) -> str:
        return f"02:0a:d5:02:00:{self.host.last_octet:02x}"

    @property
    def state_dir(self) -> Path:
        return lab_dir() / "bmc" / self.host.name

    @property
    def password_file(self) -> Path:
        return lab_dir() / "bmc" / f"{self.host.name}.password"


@dataclass(frozen=True)
class LabClient:
    """Somebody on the guests' network: a namespace with one link into the segment."""

    name: str = "client"
    address: str = GUEST_GATEWAY
    role: str = "client"

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        return f"{NETNS_PREFIX}{self.name}-g"


CLIENT = LabClient()

HOSTS: tuple[LabHost, ...] = (
    LabHost("disk1", "disk", "10.213.0.11", aoe_shelf=1),
    LabHost("disk2", "disk", "10.213.0.12", aoe_shelf=2),
    LabHost("cpu1", "cpu", "10.213.0.21"),
    LabHost("cpu2", "cpu", "10.213.0.22"),
)


def host(name: str) -> LabHost:
    for candidate in HOSTS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no lab host {name!r} (hosts: {', '.join(h.name for h in HOSTS)})")


def cpu_hosts() -> list[LabHost]:
    return [h for h in HOSTS if h.role == "cpu"]


def bmcs() -> list[LabBmc]:
    return [h.bmc for h in HOSTS if h.bmc is not None]


def lab_dir() -> Path:
    return Path(settings.LAB_DIR)


def panel_identity() -> Path:
    return lab_dir() / "ssh" / "id_ed25519"


def panel_known_hosts() -> Path:
    return lab_dir() / "ssh" / "known_hosts"
