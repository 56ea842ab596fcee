"""What a hypervisor flavour is: the few things KVM and Xen do their own way under libvirt.

A flavour is plain data, one instance per flavour (drivers/hypervisors/kvm.py, xen.py), read by
the modules that talk to libvirt: the domain XML (drivers/hypervisor.py), live migration
(drivers/migration.py, the migration URI of vms/migration.py), whether a guest agent can be asked
(storage/guest_health.py) and which domains are the host's own (hosts/foreign.py). Everything else
— the life cycle, consoles, events, job statistics — is libvirt's common ground and the same for
every flavour.
"""
from __future__ import annotations

from dataclasses import dataclass

import libvirt

# Every flavour migrates with these. PEER2PEER: the source libvirtd drives the migration itself and
# talks to the target directly, so the panel's connections may drop without stranding it.
# PERSIST_DEST + UNDEFINE_SOURCE: the definition moves with the guest, so it can never be started on
# two hosts from stale configs.
MIGRATE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


@dataclass(frozen=True, eq=False)  # one instance per flavour: compared and hashed by identity
class Flavour:
    # The CpuServer.hypervisor value, and the domain XML's type attribute.
    name: str
    # libvirt's driver in a URI (`qemu+ssh://`, `xen+ssh://`): how one host reaches another's.
    uri_scheme: str

    # --- the domain XML ---
    features: tuple[str, ...]
    # The guest's disk names (prefix + a, b, ...) and the bus they sit on.
    disk_prefix: str
    disk_bus: str
    # <driver> attributes of a block device (a leg: an AoE export), of a file (the seed) and of the
    # CD drive. Disks are shared by every CPU server: no host cache, so that live migration is safe.
    block_driver: dict[str, str]
    file_driver: dict[str, str]
    cdrom_driver: dict[str, str]
    nic_model: str  # empty: the hypervisor's default
    video_model: str
    # A virtio-serial channel for the QEMU guest agent (drivers/guest_agent.py): how the panel reads
    # the guest's RAID1 from inside. Without it a guest's mirror health stays unknown.
    guest_agent: bool

    # --- live migration ---
    migrate_flags: int
    migration_bandwidth_cap: bool  # takes VIR_MIGRATE_PARAM_BANDWIDTH

    # Domains the hypervisor lists that are the host itself, not guests.
    control_domains: frozenset[str] = frozenset()

    @property
    def migration_uri_template(self) -> str:
        """How the source host's libvirtd reaches the target's, as root with the source's own SSH
        key ({user}, {address}, {port}: ":N" or empty, {name})."""
        return f"{self.uri_scheme}+ssh://{{user}}@{{address}}{{port}}/system"
