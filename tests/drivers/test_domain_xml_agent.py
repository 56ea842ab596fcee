"""drivers.hypervisor.domain_xml: the guest agent's channel (KVM/QEMU only) and direct kernel boot
with an initramfs and a command line, checked against libvirt's own schema."""
from __future__ import annotations

import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from drivers import hypervisor as hv
from drivers.errors import DriverError


def spec(hypervisor: str = "qemu", **boot: str) -> hv.DomainSpec:
    return hv.DomainSpec(name="guest", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=128,
                         disks=("/dev/etherd/e1.0", "/dev/etherd/e2.0"), hypervisor=hypervisor, **boot)


def valid(xml: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("hypervisor", ["kvm", "qemu"])
def test_kvm_and_qemu_guests_get_the_guest_agent_channel(hypervisor, tmp_path):
    xml = hv.domain_xml(spec(hypervisor))
    valid(xml, tmp_path)
    (channel,) = ET.fromstring(xml).findall("devices/channel")
    assert channel.get("type") == "unix" and channel.find("source") is None  # libvirt picks the path
    assert channel.find("target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}


def test_xen_guests_have_no_agent_channel(tmp_path):
    xml = hv.domain_xml(spec("xen"))
    valid(xml, tmp_path)
    assert ET.fromstring(xml).find("devices/channel") is None


def test_direct_kernel_boot_with_initramfs_and_command_line(tmp_path):
    xml = hv.domain_xml(spec(kernel="/srv/g/vmlinuz", initrd="/srv/g/initrd.img",
                             cmdline="console=ttyS0 mirror.resync_kbps=2000"))
    valid(xml, tmp_path)
    os_element = ET.fromstring(xml).find("os")
    assert [(child.tag, child.text) for child in os_element][1:] == [
        ("kernel", "/srv/g/vmlinuz"), ("initrd", "/srv/g/initrd.img"),
        ("cmdline", "console=ttyS0 mirror.resync_kbps=2000")]
    assert os_element.find("boot") is None


def test_without_a_kernel_the_disk_boots_as_before():
    os_element = ET.fromstring(hv.domain_xml(spec())).find("os")
    assert os_element.find("boot").get("dev") == "hd" and os_element.find("initrd") is None


@pytest.mark.parametrize("boot", [
    {"initrd": "/srv/initrd.img"},  # no kernel
    {"cmdline": "console=ttyS0"},  # no kernel
    {"kernel": "/k", "initrd": "relative/initrd"},
    {"kernel": "/k", "cmdline": "a\nb"},
])
def test_bad_boot_settings_are_refused(boot):
    with pytest.raises(DriverError) as caught:
        hv.domain_xml(spec(**boot))
    assert caught.value.permanent
