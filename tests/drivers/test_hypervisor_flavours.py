"""drivers/hypervisors/: the flavour registry, and the devices the panel changes on a running guest
(a leg plugged back, the CD emptied) written as the guest's own flavour writes them. libvirt is
stood in for at libvirt.open by a domain that answers with the XML the panel defined it with
(tests/drivers/domain_xml/) and records the devices it is given."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from drivers import hypervisor as hv
from drivers import hypervisors
from drivers.errors import DriverError

DEFINED = Path(__file__).parent / "domain_xml"
URI = "test:///stand-in"


class Domain:
    def __init__(self, xml: str) -> None:
        self.xml = xml
        self.attached: list[tuple[ET.Element, int]] = []
        self.updated: list[tuple[ET.Element, int]] = []

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 - libvirt's name
        return self.xml

    def attachDeviceFlags(self, xml: str, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.attached.append((ET.fromstring(xml), flags))  # noqa: S314 - the driver's own XML
        return 0

    def updateDeviceFlags(self, xml: str, flags: int) -> int:  # noqa: N802 - libvirt's name
        self.updated.append((ET.fromstring(xml), flags))  # noqa: S314 - the driver's own XML
        return 0


class Connection:
    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def lookupByName(self, name: str) -> Domain:  # noqa: N802 - libvirt's name
        return self.domain

    def close(self) -> int:
        return 0


def running(monkeypatch, defined_as: str) -> Domain:
    domain = Domain((DEFINED / defined_as).read_text())
    monkeypatch.setattr(libvirt, "open", lambda uri: Connection(domain))
    return domain


@pytest.mark.parametrize(("hypervisor", "target", "driver"), [
    ("kvm", {"dev": "vdc", "bus": "virtio"}, {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}),
    ("qemu", {"dev": "vdc", "bus": "virtio"}, {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}),
    ("xen", {"dev": "xvdc", "bus": "xen"}, {"name": "phy"}),
])
def test_a_leg_plugged_back_is_a_disk_of_the_guests_flavour_on_the_next_free_name(
        monkeypatch, hypervisor, target, driver):
    domain = running(monkeypatch, f"{hypervisor}-installing.xml")  # two legs: the third name is free
    hv.plug_disk(URI, "xa-iso", "/dev/etherd/e2.8", "xenaoe-leg1")
    [(disk, flags)] = domain.attached
    assert (disk.find("target").attrib, disk.find("driver").attrib) == (target, driver)
    assert (disk.find("source").get("dev"), disk.findtext("serial")) == ("/dev/etherd/e2.8", "xenaoe-leg1")
    assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG


@pytest.mark.parametrize(("hypervisor", "driver"), [
    ("kvm", {"name": "qemu", "type": "raw"}), ("qemu", {"name": "qemu", "type": "raw"}), ("xen", {"name": "phy"}),
])
def test_the_cd_drive_is_emptied_as_the_guests_flavour_defined_it(monkeypatch, hypervisor, driver):
    domain = running(monkeypatch, f"{hypervisor}-installing.xml")
    assert hv.eject_cdrom(URI, "xa-iso") is True
    [(drive, _flags)] = domain.updated
    assert drive.get("device") == "cdrom" and drive.find("source") is None
    assert (drive.find("driver").attrib, drive.find("target").attrib) == (driver, {"dev": "hdc", "bus": "ide"})


def test_a_guest_without_a_cd_drive_has_nothing_to_empty(monkeypatch):
    domain = running(monkeypatch, "xen-installed.xml")
    assert hv.eject_cdrom(URI, "xa-web") is False and domain.updated == []


def test_every_flavour_is_found_by_its_name_and_no_other_name_is():
    assert [hypervisors.flavour(name).name for name in hypervisors.NAMES] == ["kvm", "qemu", "xen"]
    for name in ("KVM", "vmware", "", None):
        with pytest.raises(DriverError, match="hypervisor must be one of kvm, qemu, xen") as err:
            hypervisors.flavour(name)  # type: ignore[arg-type]
        assert err.value.permanent


def test_a_hypervisors_own_domain_is_known_whichever_flavour_lists_it():
    assert hypervisors.CONTROL_DOMAINS == {"Domain-0"}
    assert hypervisors.flavour("xen").control_domains == {"Domain-0"}
    assert hypervisors.flavour("kvm").control_domains == frozenset()
