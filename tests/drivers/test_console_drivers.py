"""The consoles' drivers without a host: every guest's VNC display on the loopback only (checked
against libvirt's schema), the display read from a running domain's XML, the SSH forward's command
line, and a tunnel that refuses what is not a VNC display."""
from __future__ import annotations

import asyncio
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from drivers import hypervisor as hv
from drivers import vnc
from drivers.errors import DriverError
from drivers.ssh import SSHTarget
from tests.drivers.test_domain_xml_agent import valid


def spec(hypervisor: str) -> hv.DomainSpec:
    return hv.DomainSpec(name="guest", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=128,
                         disks=("/dev/etherd/e1.0",), hypervisor=hypervisor)


@pytest.mark.parametrize("hypervisor", ["kvm", "qemu", "xen"])
def test_every_guest_has_a_vnc_display_on_the_loopback_only(hypervisor, tmp_path):
    xml = hv.domain_xml(spec(hypervisor))
    graphics = ET.fromstring(xml).findall("devices/graphics")
    assert [(g.get("type"), g.get("autoport"), [(x.get("type"), x.get("address")) for x in g.findall("listen")])
            for g in graphics] == [("vnc", "yes", [("address", "127.0.0.1")])]
    assert ET.fromstring(xml).find("devices/video/model") is not None
    valid(xml, tmp_path)


def test_the_display_is_read_from_the_running_domain():
    conn = libvirt.open("test:///default")  # the test driver's state lives while a connection is open
    try:
        xml = hv.domain_xml(spec("qemu")).replace("<domain type=\"qemu\">", "<domain type=\"test\">")
        dom = conn.defineXML(xml)
        with pytest.raises(DriverError, match="not running"):
            hv.vnc_display("test:///default", "guest")
        dom.create()
        # The test driver keeps the XML it was given: autoport's -1, i.e. no port yet.
        with pytest.raises(DriverError, match="no VNC display"):
            hv.vnc_display("test:///default", "guest")
        dom.destroy()
        dom.undefine()
        dom = conn.createXML(xml.replace("port=\"-1\" autoport=\"yes\"", "port=\"5907\" autoport=\"no\""), 0)
        assert hv.vnc_display("test:///default", "guest") == hv.VncDisplay("127.0.0.1", 5907)
        dom.destroy()
    finally:
        conn.close()


def target(host: str = "192.0.2.21", user: str = "root") -> SSHTarget:
    return SSHTarget(host=host, user=user, identity_file=Path("/k"), known_hosts_file=Path("/kh"),
                     control_dir=Path("/tmp/xenaoe-test-ssh"), name="cpu1")


def test_the_forward_goes_through_ssh_to_the_loopback_and_refuses_odd_input():
    command = vnc.forward_command(target(), hv.VncDisplay("127.0.0.1", 5900))
    assert command[0] == "ssh" and "StrictHostKeyChecking=yes" in command
    assert command[-4:] == ["-W", "127.0.0.1:5900", "--", "192.0.2.21"]
    assert vnc.forward_command(target(), hv.VncDisplay("::1", 5901))[-3] == "[::1]:5901"
    for bad in (hv.VncDisplay("127.0.0.1 -oProxyCommand=x", 5900), hv.VncDisplay("127.0.0.1", 0)):
        with pytest.raises(DriverError):
            vnc.forward_command(target(), bad)
    with pytest.raises(DriverError):
        vnc.forward_command(target(host="-oProxyCommand=x"), hv.VncDisplay("127.0.0.1", 5900))


@pytest.mark.asyncio
async def test_a_tunnel_that_does_not_greet_like_vnc_is_refused(monkeypatch):
    def not_vnc(_target, _display) -> list[str]:
        return [sys.executable, "-c", "print('SSH-2.0-nope'); import time; time.sleep(5)"]

    monkeypatch.setattr(vnc, "forward_command", not_vnc)
    with pytest.raises(DriverError, match="not a VNC display"):
        await vnc.open_tunnel(target(), hv.VncDisplay("127.0.0.1", 5900), timeout=3)

    def silent(_target, _display) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(5)"]

    monkeypatch.setattr(vnc, "forward_command", silent)
    started = asyncio.get_running_loop().time()
    with pytest.raises(DriverError, match="no VNC display"):
        await vnc.open_tunnel(target(), hv.VncDisplay("127.0.0.1", 5900), timeout=0.5)
    assert asyncio.get_running_loop().time() - started < 3
