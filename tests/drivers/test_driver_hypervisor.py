"""drivers.hypervisor: domain XML validated against libvirt's own schema, and the domain life cycle
against libvirt's in-process fake hypervisor (test:///default).

test:///default keeps its state only while some connection to it is open in this process, and
every driver call opens and closes its own connection. The `keeper` fixture therefore holds one
connection open for the module: the driver's calls then share one fake hypervisor, so a define
in one call is seen by the start in the next, and the tests can check through the keeper's
independent connection that a call really changed the hypervisor, not only what it returned.
"""
from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from drivers import hypervisor as hv
from drivers.errors import DriverError

URI = "test:///default"
ODD_NAME = "vm <1> & \"quoted\" 'x' ü"


def spec(hypervisor: str = "kvm", name: str = "guest", disks: tuple[str, ...] = ("/dev/etherd/e1.0",
                                                                                 "/dev/etherd/e2.0")):
    return hv.DomainSpec(name=name, uuid=str(uuid.uuid4()), vcpus=2, memory_mib=256, disks=disks,
                         hypervisor=hypervisor)


def validate(xml: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, timeout=30)


# ---- domain XML -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hypervisor", ["kvm", "qemu", "xen"])
def test_domain_xml_validates_against_libvirts_schema(hypervisor, tmp_path):
    result = validate(hv.domain_xml(spec(hypervisor, name=ODD_NAME)), tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("hypervisor", ["kvm", "qemu"])
def test_kvm_and_qemu_disks_are_raw_virtio_block_devices_without_host_cache(hypervisor):
    s = spec(hypervisor)
    root = ET.fromstring(hv.domain_xml(s))
    assert root.get("type") == hypervisor
    assert root.findtext("os/type") == "hvm"
    assert (root.findtext("name"), root.findtext("uuid")) == (s.name, s.uuid)
    assert root.findtext("vcpu") == "2" and root.find("memory").attrib == {"unit": "MiB"}
    assert root.findtext("memory") == "256"
    disks = root.findall("devices/disk")
    assert [d.attrib for d in disks] == [{"type": "block", "device": "disk"}] * 2
    assert [d.find("driver").attrib for d in disks] == [
        {"name": "qemu", "type": "raw", "cache": "none", "io": "native"}] * 2
    assert [d.find("source").get("dev") for d in disks] == list(s.disks)
    assert [d.find("target").attrib for d in disks] == [{"dev": "vda", "bus": "virtio"},
                                                        {"dev": "vdb", "bus": "virtio"}]
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}
    assert root.find("devices/interface") is None  # no network yet


def test_xen_disks_are_phy_devices_on_the_xen_bus():
    root = ET.fromstring(hv.domain_xml(spec("xen")))
    assert root.get("type") == "xen" and root.findtext("os/type") == "hvm"
    disks = root.findall("devices/disk")
    assert [d.find("driver").attrib for d in disks] == [{"name": "phy"}] * 2
    assert [d.find("target").attrib for d in disks] == [{"dev": "xvda", "bus": "xen"},
                                                        {"dev": "xvdb", "bus": "xen"}]


def test_odd_characters_in_names_and_paths_are_escaped_not_interpreted():
    s = spec(name=ODD_NAME, disks=("/dev/disk/by-id/a&b<c>'\"",))
    xml = hv.domain_xml(s)
    assert "&lt;1&gt; &amp;" in xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == ODD_NAME
    assert root.find("devices/disk/source").get("dev") == "/dev/disk/by-id/a&b<c>'\""


@pytest.mark.parametrize("bad", [
    {"hypervisor": "lxc"},
    {"name": "a/b"},
    {"name": ""},
    {"name": "line\nbreak"},
    {"uuid": "not-a-uuid"},
    {"vcpus": 0},
    {"memory_mib": 0},
    {"disks": ()},
    {"disks": ("relative/path",)},
    {"disks": tuple(f"/dev/d{i}" for i in range(27))},
])
def test_domain_xml_refuses_bad_specs(bad):
    fields = {**spec().__dict__, **bad}
    with pytest.raises(DriverError) as caught:
        hv.domain_xml(hv.DomainSpec(**fields))
    assert caught.value.permanent


# ---- life cycle on test:///default ------------------------------------------------------------


@pytest.fixture(scope="module")
def keeper() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@pytest.fixture
def guest(keeper) -> Iterator[hv.DomainSpec]:
    s = spec("kvm", name=f"guest-{uuid.uuid4().hex[:8]}")
    yield s
    try:
        dom = keeper.lookupByName(s.name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    if dom.isPersistent():
        dom.undefine()


def test_define_start_destroy_undefine(keeper, guest):
    info = hv.define(URI, hv.domain_xml(guest))
    assert info == hv.DomainInfo(guest.name, guest.uuid, "shutoff", True)
    assert keeper.lookupByName(guest.name).UUIDString() == guest.uuid

    assert hv.start(URI, guest.name) == hv.DomainInfo(guest.name, guest.uuid, "running", True)
    assert keeper.lookupByName(guest.name).isActive()
    assert hv.domain_info(URI, guest.name).state == "running"

    hv.destroy(URI, guest.name)
    assert not keeper.lookupByName(guest.name).isActive()
    assert hv.domain_info(URI, guest.name).state == "shutoff"

    hv.undefine(URI, guest.name)
    assert hv.domain_info(URI, guest.name) is None
    with pytest.raises(libvirt.libvirtError):
        keeper.lookupByName(guest.name)


def test_every_step_is_idempotent(keeper, guest):
    xml = hv.domain_xml(guest)
    assert hv.define(URI, xml) == hv.define(URI, xml)  # a redefinition with the same UUID
    first = hv.start(URI, guest.name)
    assert hv.start(URI, guest.name) == first and first.state == "running"
    hv.destroy(URI, guest.name)
    hv.destroy(URI, guest.name)  # already off
    hv.undefine(URI, guest.name)
    hv.undefine(URI, guest.name)  # already gone
    hv.destroy(URI, guest.name)  # gone altogether


def test_start_leaves_a_paused_domain_paused(keeper, guest):
    hv.define(URI, hv.domain_xml(guest))
    hv.start(URI, guest.name)
    keeper.lookupByName(guest.name).suspend()
    assert hv.start(URI, guest.name).state == "paused"


def test_undefine_of_a_running_domain_leaves_it_running_transient(keeper, guest):
    hv.define(URI, hv.domain_xml(guest))
    hv.start(URI, guest.name)
    hv.undefine(URI, guest.name)
    assert hv.domain_info(URI, guest.name) == hv.DomainInfo(guest.name, guest.uuid, "running", False)
    hv.undefine(URI, guest.name)  # transient: nothing left to undefine
    hv.destroy(URI, guest.name)
    assert hv.domain_info(URI, guest.name) is None  # a transient domain is gone once off


def test_list_domains(keeper, guest):
    hv.define(URI, hv.domain_xml(guest))
    listed = hv.list_domains(URI)
    assert [d.name for d in listed] == sorted(d.name for d in listed)
    assert hv.DomainInfo(guest.name, guest.uuid, "shutoff", True) in listed
    assert hv.DomainInfo("test", keeper.lookupByName("test").UUIDString(), "running", True) in listed
    # Memory as the domain holds it now (the test driver's "test" runs with 2 GiB of its 8).
    memory = {d.name: d.memory_mib for d in listed}
    assert memory["test"] == keeper.lookupByName("test").info()[2] // 1024 == 2048
    assert memory[guest.name] == guest.memory_mib
    hv.undefine(URI, guest.name)
    assert guest.name not in [d.name for d in hv.list_domains(URI)]


def test_odd_names_survive_the_round_trip(keeper):
    s = spec("qemu", name=ODD_NAME)
    try:
        assert hv.define(URI, hv.domain_xml(s)).name == ODD_NAME
        assert hv.start(URI, ODD_NAME).state == "running"
        assert keeper.lookupByName(ODD_NAME).UUIDString() == s.uuid
    finally:
        hv.destroy(URI, ODD_NAME)
        hv.undefine(URI, ODD_NAME)


def test_missing_domain(keeper):
    assert hv.domain_info(URI, "no-such-guest") is None
    with pytest.raises(DriverError) as caught:
        hv.start(URI, "no-such-guest")
    assert caught.value.permanent and "no-such-guest" in str(caught.value)


def test_define_refuses_another_guest_of_the_same_name(keeper, guest):
    hv.define(URI, hv.domain_xml(guest))
    impostor = hv.DomainSpec(**{**guest.__dict__, "uuid": str(uuid.uuid4())})
    with pytest.raises(DriverError) as caught:
        hv.define(URI, hv.domain_xml(impostor))
    assert caught.value.permanent and guest.uuid in str(caught.value)
    assert keeper.lookupByName(guest.name).UUIDString() == guest.uuid


@pytest.mark.parametrize("xml", ["<domain>", "<domain type='kvm'><name>x</name></domain>",
                                 "<domain type='kvm'><name>x</name><memory>1</memory><os><type>hvm</type></os>"
                                 "<devices><disk type='block' device='disk'><source dev='/x'/></disk>"
                                 "</devices></domain>"])
def test_invalid_xml_is_a_permanent_error(keeper, xml):
    with pytest.raises(DriverError) as caught:
        hv.define(URI, xml)
    assert caught.value.permanent


def test_libvirt_errors_are_raised_not_printed(capfd):
    with pytest.raises(DriverError):
        hv.start(URI, "no-such-guest")
    with pytest.raises(DriverError):
        hv.list_domains("qemu+unix:///system?socket=/nonexistent/xat.sock")
    assert capfd.readouterr().err == ""


def test_connection_failure_is_temporary(tmp_path):
    with pytest.raises(DriverError) as caught:
        hv.list_domains(f"qemu+unix:///system?socket={tmp_path}/absent.sock")
    assert not caught.value.permanent


class SilentLibvirtd:
    """A Unix socket that accepts libvirt connections and never answers: a hung libvirtd."""

    def __init__(self, path: Path) -> None:
        self.uri = f"qemu+unix:///system?socket={path}"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._server.settimeout(0.1)
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._accepted.append(self._server.accept()[0])
            except OSError:
                continue

    def hang_up(self) -> None:
        """Close everything: libvirt calls still waiting on us fail now."""
        self._stop.set()
        self._thread.join()
        for conn in self._accepted:
            conn.close()
        self._server.close()


@pytest.fixture
def silent_libvirtd(tmp_path) -> Iterator[SilentLibvirtd]:
    daemon = SilentLibvirtd(tmp_path / "hung.sock")
    yield daemon
    daemon.hang_up()


def libvirt_workers() -> list[threading.Thread]:
    # Not libvirt's event loop thread (drivers/domain_events.py), which a console opened earlier in
    # the same process starts for good.
    return [t for t in threading.enumerate() if t.name.startswith("libvirt ") and t.name != "libvirt events"]


def test_a_hung_hypervisor_times_out(silent_libvirtd):
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        hv.domain_info(silent_libvirtd.uri, "guest", timeout=0.5)
    assert time.monotonic() - started < 2
    assert "timed out after 0.5 s" in str(caught.value) and not caught.value.permanent


def test_abandoned_calls_end_once_the_hypervisor_goes_away(silent_libvirtd):
    with pytest.raises(DriverError):
        hv.list_domains(silent_libvirtd.uri, timeout=0.3)
    assert any(t.name == "libvirt list domains" for t in libvirt_workers())
    silent_libvirtd.hang_up()
    deadline = time.monotonic() + 10
    while libvirt_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert libvirt_workers() == []
