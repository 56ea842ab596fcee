"""drivers.hypervisor.domain_xml for each hypervisor flavour, byte for byte against the XML the panel
wrote before the flavours moved into drivers/hypervisors/ (tests/drivers/domain_xml/, captured from
commit c655940): what libvirt is told to run must not change with where the knowledge lives. Each
guest uses every part of the XML a flavour decides on: disks, the seed, the CD drive, NICs, the
guest agent's channel, the video model."""
from __future__ import annotations

from pathlib import Path

import pytest

from drivers import hypervisor as hv

CAPTURED = Path(__file__).parent / "domain_xml"
UUID = "6f1c1f0e-8a53-4d1e-9a55-3b7d1c1e2a40"
NICS = (hv.NicSpec(mac="52:54:00:12:34:56", bridge="br-guest"),
        hv.NicSpec(mac="52:54:00:12:34:57", bridge="ovs-vms", vlan=42, openvswitch=True))


def installed(hypervisor: str) -> hv.DomainSpec:
    """A guest as the panel creates it: direct kernel boot, two legs with serials, a seed, NICs."""
    return hv.DomainSpec(
        name="xa-web", uuid=UUID, vcpus=2, memory_mib=512, disks=("/dev/etherd/e1.7", "/dev/etherd/e2.7"),
        hypervisor=hypervisor, kernel="/var/lib/xenaoe/boot/vmlinuz", initrd="/var/lib/xenaoe/boot/initrd.img",
        cmdline="console=ttyS0 root=/dev/md0", disk_serials=("xenaoe-leg0", "xenaoe-leg1"),
        seed="/var/lib/xenaoe/seed/xa-web.iso", nics=NICS)


def installing(hypervisor: str) -> hv.DomainSpec:
    """A guest installed from an ISO: booted from its CD drive first, no kernel, no seed."""
    return hv.DomainSpec(
        name="xa-iso", uuid=UUID, vcpus=1, memory_mib=1024, disks=("/dev/etherd/e1.8", "/dev/etherd/e2.8"),
        hypervisor=hypervisor, disk_serials=("xenaoe-leg0", "xenaoe-leg1"), cdrom="/dev/etherd/e1.250",
        nics=NICS[:1])


GUESTS = {"installed": installed, "installing": installing}


@pytest.mark.parametrize("hypervisor", ["kvm", "qemu", "xen"])
@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_each_flavour_writes_the_domain_xml_it_wrote_before(hypervisor, guest):
    expected = (CAPTURED / f"{hypervisor}-{guest}.xml").read_text()
    assert hv.domain_xml(GUESTS[guest](hypervisor)) == expected
