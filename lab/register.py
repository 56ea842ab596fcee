"""Record the lab's hosts in the panel's database, as an operator would add real ones."""
from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

from hosts.choices import Hypervisor
from hosts.models import CpuServer, DiskServer
from lab.topology import (
    BMC_PORT,
    BMC_USER,
    GUEST_BRIDGE,
    GUEST_CIDR,
    GUEST_GATEWAY,
    GUEST_NETWORK,
    GUEST_POOL,
    SAN_IFACE,
    VOLUME_DIR,
    host,
)

if TYPE_CHECKING:
    from lab.cluster import LabStatus

DISK_CAPACITY_MIB = 20480
CPU_MEMORY_MIB = 4096
CPU_VCPUS = 4


@transaction.atomic
def register_hosts(status: LabStatus) -> None:
    """Create or update one row per running lab host, by name; other rows (and the VMs, exports
    and mirrors pointing at these rows) are left alone, so running it again changes nothing."""
    for running in status.hosts:
        if running.role == "client":
            continue  # not a server: somebody on the guests' network
        lab_host = host(running.name)
        common = {"address": lab_host.address, "ssh_user": "root", "ssh_port": 22, "san_interface": SAN_IFACE}
        if lab_host.role == "disk":
            DiskServer.objects.update_or_create(
                name=lab_host.name,
                defaults={**common, "aoe_shelf": lab_host.aoe_shelf, "volume_dir": VOLUME_DIR,
                          "capacity_mib": DISK_CAPACITY_MIB},
            )
        else:
            board = lab_host.bmc
            assert board is not None  # every lab CPU host has one (lab/topology.py)
            CpuServer.objects.update_or_create(
                name=lab_host.name,
                defaults={**common, "libvirt_uri": lab_host.libvirt_uri, "hypervisor": Hypervisor.QEMU,
                          "memory_mib": CPU_MEMORY_MIB, "vcpus": CPU_VCPUS,
                          # The path of the password file, never the password (generated in LAB_DIR).
                          "bmc_address": board.address, "bmc_port": BMC_PORT, "bmc_user": BMC_USER,
                          "bmc_password_file": str(board.password_file),
                          "san_mac": lab_host.san_mac, "fence_methods": "ipmi,storage"},
            )


def register_guest_network() -> None:
    """The lab's guests' network as a panel network, the default one unless another is; left as
    it is when it exists (an operator may have changed it)."""
    from networks.models import Network
    from networks.services import NetworkRequest, create_network

    if Network.objects.filter(name=GUEST_NETWORK).exists():
        return
    create_network(NetworkRequest(
        name=GUEST_NETWORK, bridge=GUEST_BRIDGE, cidr=GUEST_CIDR, gateway=GUEST_GATEWAY,
        pool=f"{GUEST_POOL[0]}-{GUEST_POOL[1]}", dns=GUEST_GATEWAY,
    ))


def clear_guests(cpus: list, disks: list) -> None:
    """A lab without guests: every domain, export and volume on the hosts removed. What a test or a
    bench starts from: its database is new, so anything still on the hosts is what an interrupted
    run left behind, and it would take the shelf slots the new VMs are given."""
    from drivers import aoe, hypervisor, ssh, vblade
    from drivers.errors import DriverError
    from hosts.targets import ssh_target

    stopped = []
    for disk in disks:
        try:
            target = ssh_target(disk)
            for export in vblade.list_exports(target):
                vblade.stop_export(target, export.shelf, export.slot)
                stopped.append((export.shelf, export.slot))
            # Every volume, exported or not: a volume left behind makes the next create of that
            # name refuse to overwrite it.
            found = ssh.run(target, ["find", disk.volume_dir, "-maxdepth", "1", "-name", "*.img", "-type", "f"],
                            timeout=30)
            for path in found.stdout.split():
                vblade.remove_volume(target, path)
        except DriverError:
            pass  # a host left down: whoever needs it brings the lab up
    for cpu in cpus:
        try:
            for domain in hypervisor.list_domains(cpu.libvirt_uri):
                if domain.name.startswith("xa-"):
                    hypervisor.destroy(cpu.libvirt_uri, domain.name)
                    hypervisor.undefine(cpu.libvirt_uri, domain.name)
            for shelf, slot in stopped:
                aoe.detach(ssh_target(cpu), shelf, slot)
        except DriverError:
            pass
