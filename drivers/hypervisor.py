"""Guests through libvirt: domain XML and the define / start / shutdown / destroy / undefine life
cycle (live migration is drivers/migration.py, on the same connection helpers).

Any libvirt URI works (`xen+ssh://`, `qemu+ssh://`, `qemu+libssh2://...`, `test:///default`): it
comes from configuration. Every call goes through drivers/libvirt_calls.py: a worker thread, an
explicit timeout, a connection kept open per remote host. What KVM and Xen do differently is
their flavour's (drivers/hypervisors/).

Idempotency is decided here (already running, already gone), not left to each hypervisor
driver's wording: the test driver, for one, calls a second start an "internal error".
"""
from __future__ import annotations

import re
import uuid as uuid_module
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TypeVar

import libvirt

from drivers import hypervisors
from drivers.errors import DriverError
from drivers.hypervisors import Flavour
from drivers.libvirt_calls import lookup, lookup_or_fail, with_connection

T = TypeVar("T")

_SERIAL = re.compile(r"[A-Za-z0-9_.-]{1,20}")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_BRIDGE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
MAX_DISKS = 26  # vda..vdz / xvda..xvdz
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
VNC_LISTEN = "127.0.0.1"

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

# Managed save images and snapshot metadata would otherwise make undefine fail.
UNDEFINE_FLAGS = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


@dataclass(frozen=True)
class NicSpec:
    mac: str
    bridge: str  # the bridge on the CPU server, the same name on every one
    vlan: int | None = None  # tagged by libvirt on Open vSwitch bridges only
    openvswitch: bool = False


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    disks: tuple[str, ...]  # block devices, e.g. /dev/etherd/e1.0; the first one boots
    hypervisor: str  # a flavour's name (drivers/hypervisors/): "kvm" | "qemu" | "xen"
    # Direct kernel boot: a kernel image at this path on every CPU server (else the BIOS boots
    # the first disk), with an optional initramfs (same rule) and kernel command line.
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    # Serial numbers the guest sees on its disks (in order): how a VM's initramfs tells its two
    # legs apart from other disks (images/guest/init).
    disk_serials: tuple[str, ...] = ()
    # A read-only disk with the first-boot settings (a NoCloud seed, images/seed.py); empty: none.
    seed: str = ""
    nics: tuple[NicSpec, ...] = ()
    # An installer ISO in a CD drive (a read-only block device, e.g. an AoE export): booted first,
    # then the first disk. Empty: no CD drive.
    cdrom: str = ""


SEED_SERIAL = "xenaoe-seed"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: str  # running, paused, shutoff, crashed, blocked, shutdown, pmsuspended, nostate
    persistent: bool
    # What it holds now (inactive: what it would take when started). A reading, not part of what
    # the domain is: two readings of the same domain in the same state compare equal.
    memory_mib: int = field(default=0, compare=False)


def domain_xml(spec: DomainSpec) -> str:
    """Domain XML for `spec`: an HVM guest whose disks are raw block devices (AoE exports) with no
    host cache, so that libvirt treats them as shared storage and live migration is safe; a
    serial console on a pty; a VNC display on the server's loopback; bridged NICs; an optional
    read-only seed disk; for a flavour with a guest agent a virtio-serial channel for it
    (`org.qemu.guest_agent.0`: how the panel reads the guest's RAID1, drivers/guest_agent.py).
    The devices are the flavour's (drivers/hypervisors/). Built with ElementTree, so names are
    escaped."""
    _check_spec(spec)
    flavour = hypervisors.flavour(spec.hypervisor)
    domain = ET.Element("domain", type=flavour.name)
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "uuid").text = str(uuid_module.UUID(spec.uuid))
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "currentMemory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    if spec.kernel:
        ET.SubElement(os_element, "kernel").text = spec.kernel
        if spec.initrd:
            ET.SubElement(os_element, "initrd").text = spec.initrd
        if spec.cmdline:
            ET.SubElement(os_element, "cmdline").text = spec.cmdline
    else:
        if spec.cdrom:
            ET.SubElement(os_element, "boot", dev="cdrom")
        ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    for feature in flavour.features:
        ET.SubElement(features, feature)
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    # A crashed guest stays down: restarting it is the panel's decision (it may be split brain).
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    for index, path in enumerate(spec.disks):
        serial = spec.disk_serials[index] if index < len(spec.disk_serials) else ""
        devices.append(_block_disk(flavour, path, _disk_name(flavour, index), serial))
    if spec.seed:
        # A small file on the CPU server, read-only: libvirt skips it in the shared-storage check
        # of a live migration, and the panel puts the same file on the target first.
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", flavour.file_driver)
        ET.SubElement(disk, "source", file=spec.seed)
        ET.SubElement(disk, "target", dev=_disk_name(flavour, len(spec.disks)), bus=flavour.disk_bus)
        ET.SubElement(disk, "readonly")
        ET.SubElement(disk, "serial").text = SEED_SERIAL
    if spec.cdrom:
        devices.append(_cdrom(flavour, spec.cdrom))
    for nic in spec.nics:
        interface = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(interface, "mac", address=nic.mac)
        ET.SubElement(interface, "source", bridge=nic.bridge)
        if nic.openvswitch:
            ET.SubElement(interface, "virtualport", type="openvswitch")
            if nic.vlan is not None:
                ET.SubElement(ET.SubElement(interface, "vlan"), "tag", id=str(nic.vlan))
        if flavour.nic_model:
            ET.SubElement(interface, "model", type=flavour.nic_model)
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    # The graphical console: VNC on the CPU server's loopback only (any free port), reached by the
    # panel through SSH (drivers/vnc.py), never from the network. Loopback exists on every server, so
    # a live migration keeps it.
    graphics = ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes")
    ET.SubElement(graphics, "listen", type="address", address=VNC_LISTEN)
    ET.SubElement(ET.SubElement(devices, "video"), "model", type=flavour.video_model)
    if flavour.guest_agent:
        # libvirt picks the socket path itself (per domain, under /var/lib/libvirt/qemu/channel)
        # and connects its agent client to it; it survives live migration.
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


CDROM_TARGET = "hdc"  # an IDE CD drive: what every installer and BIOS (SeaBIOS, Xen's hvmloader) knows


def _disk_name(flavour: Flavour, index: int) -> str:
    return flavour.disk_prefix + chr(ord("a") + index)


def _block_disk(flavour: Flavour, device: str, target: str, serial: str) -> ET.Element:
    """A block device as the guest's disk `target`, known to it by `serial` (empty: none)."""
    disk = ET.Element("disk", type="block", device="disk")
    ET.SubElement(disk, "driver", flavour.block_driver)
    ET.SubElement(disk, "source", dev=device)
    ET.SubElement(disk, "target", dev=target, bus=flavour.disk_bus)
    if serial:
        ET.SubElement(disk, "serial").text = serial
    return disk


def _cdrom(flavour: Flavour, source: str) -> ET.Element:
    """A read-only IDE CD drive holding `source` (empty: no medium)."""
    disk = ET.Element("disk", type="block", device="cdrom")
    ET.SubElement(disk, "driver", flavour.cdrom_driver)
    if source:
        ET.SubElement(disk, "source", dev=source)
    ET.SubElement(disk, "target", dev=CDROM_TARGET, bus="ide")
    ET.SubElement(disk, "readonly")
    return disk


def eject_cdrom(uri: str, name: str, *, timeout: float = 60) -> bool:
    """Empty the running domain's CD drive (forced, as an installer may have locked the tray).
    False when it has no CD drive or the drive is already empty."""

    def call(conn: libvirt.virConnect) -> bool:
        dom = lookup_or_fail(conn, uri, name)
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
        drive = root.find("devices/disk[@device='cdrom']")
        if drive is None or drive.find("source") is None:
            return False
        dom.updateDeviceFlags(ET.tostring(_cdrom(hypervisors.flavour(root.get("type", "")), ""), encoding="unicode"),
                              libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)
        return True

    return with_connection(uri, f"eject the CD of {name!r}", timeout, call)


def define(uri: str, xml: str, *, timeout: float = 30) -> DomainInfo:
    """Define (or redefine) a persistent domain. Refuses (permanent) if a domain of that name
    exists with another UUID: that is another guest, not a new version of this one."""
    try:
        # The XML is the panel's own (domain_xml), and Python's expat fetches no external entities
        # and caps entity expansion: safe to read the name and UUID from it.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as exc:
        raise DriverError(f"domain XML does not parse: {exc}", permanent=True) from exc
    name, wanted_uuid = root.findtext("name"), root.findtext("uuid")

    def call(conn: libvirt.virConnect) -> DomainInfo:
        existing = lookup(conn, name) if name else None
        if existing is not None and wanted_uuid and _same_uuid(existing.UUIDString(), wanted_uuid) is False:
            raise DriverError(f"{uri}: a domain named {name!r} already exists with UUID "
                              f"{existing.UUIDString()}", permanent=True)
        return _info(conn.defineXML(xml))

    return with_connection(uri, f"define {name!r}", timeout, call)


def start(uri: str, name: str, *, timeout: float = 60) -> DomainInfo:
    """Start a defined domain; a domain that is already active (running or paused) is left as
    it is and its state returned."""

    def call(conn: libvirt.virConnect) -> DomainInfo:
        dom = lookup_or_fail(conn, uri, name)
        if not dom.isActive():
            dom.create()
        return _info(dom)

    return with_connection(uri, f"start {name!r}", timeout, call)


def destroy(uri: str, name: str, *, timeout: float = 30) -> None:
    """Force the domain off (power cut, no guest shutdown). Absent or already off is fine."""

    def call(conn: libvirt.virConnect) -> None:
        dom = lookup(conn, name)
        if dom is None or not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError:
            # It may have stopped between the check and the call: that is what we wanted.
            if lookup(conn, name) is None or not dom.isActive():
                return
            raise

    with_connection(uri, f"destroy {name!r}", timeout, call)


def shutdown(uri: str, name: str, *, timeout: float = 30) -> DomainInfo:
    """Ask the guest to shut down (ACPI power button). Returns at once: the caller watches the
    state and forces the domain off (destroy) if the guest does not comply in time."""

    def call(conn: libvirt.virConnect) -> DomainInfo:
        dom = lookup_or_fail(conn, uri, name)
        if dom.isActive():
            try:
                dom.shutdown()
            except libvirt.libvirtError:
                if dom.isActive():
                    raise
        return _info(dom)

    return with_connection(uri, f"shut down {name!r}", timeout, call)


def undefine(uri: str, name: str, *, timeout: float = 30) -> None:
    """Remove the domain's persistent definition; absent is fine. A running domain keeps running
    as a transient one (destroy it first to delete a guest)."""

    def call(conn: libvirt.virConnect) -> None:
        dom = lookup(conn, name)
        if dom is None or not dom.isPersistent():
            return
        dom.undefineFlags(UNDEFINE_FLAGS)

    with_connection(uri, f"undefine {name!r}", timeout, call)


def domain_info(uri: str, name: str, *, timeout: float = 30) -> DomainInfo | None:
    """The domain's state, or None if the hypervisor does not know it."""

    def call(conn: libvirt.virConnect) -> DomainInfo | None:
        dom = lookup(conn, name)
        return None if dom is None else _info(dom)

    return with_connection(uri, f"look up {name!r}", timeout, call)


def list_domains(uri: str, *, timeout: float = 30) -> list[DomainInfo]:
    """Every persistent domain and every running transient one, sorted by name."""

    def call(conn: libvirt.virConnect) -> list[DomainInfo]:
        infos = []
        for dom in conn.listAllDomains(0):
            try:
                infos.append(_info(dom))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished while listing
                    raise
        return sorted(infos, key=lambda info: info.name)

    return with_connection(uri, "list domains", timeout, call)


def _info(dom: libvirt.virDomain) -> DomainInfo:
    state, _reason = dom.state()
    memory_kib = dom.info()[2]  # [state, max memory, current memory (KiB), vCPUs, CPU time]
    return DomainInfo(dom.name(), dom.UUIDString(), STATES.get(state, "nostate"), bool(dom.isPersistent()),
                      memory_kib // 1024)


def _same_uuid(a: str, b: str) -> bool | None:
    try:
        return uuid_module.UUID(a) == uuid_module.UUID(b)
    except ValueError:
        return None


def _check_spec(spec: DomainSpec) -> None:
    problems = []
    try:
        hypervisors.flavour(spec.hypervisor)
    except DriverError as exc:
        problems.append(str(exc))
    # libvirt refuses "/" in names (they become file names) and control characters break logs.
    if not spec.name or "/" in spec.name or any(ord(c) < 32 or ord(c) == 127 for c in spec.name):
        problems.append(f"bad domain name {spec.name!r}")
    try:
        uuid_module.UUID(spec.uuid)
    except (ValueError, TypeError, AttributeError):
        problems.append(f"bad UUID {spec.uuid!r}")
    if spec.kernel and (not spec.kernel.startswith("/") or any(ord(c) < 32 for c in spec.kernel)):
        problems.append(f"kernel must be an absolute path, not {spec.kernel!r}")
    if spec.initrd and (not spec.initrd.startswith("/") or any(ord(c) < 32 for c in spec.initrd)):
        problems.append(f"initrd must be an absolute path, not {spec.initrd!r}")
    if spec.cmdline and any(ord(c) < 32 or ord(c) == 127 for c in spec.cmdline):
        problems.append(f"bad kernel command line {spec.cmdline!r}")
    if (spec.initrd or spec.cmdline) and not spec.kernel:
        problems.append("an initrd or a kernel command line needs a kernel (direct kernel boot)")
    if not isinstance(spec.vcpus, int) or spec.vcpus < 1:
        problems.append(f"vcpus must be >= 1, not {spec.vcpus!r}")
    if not isinstance(spec.memory_mib, int) or spec.memory_mib < 1:
        problems.append(f"memory must be >= 1 MiB, not {spec.memory_mib!r}")
    if not 1 <= len(spec.disks) <= MAX_DISKS:
        problems.append(f"a domain needs 1 to {MAX_DISKS} disks, not {len(spec.disks)}")
    problems += [f"disk must be an absolute device path, not {d!r}" for d in spec.disks
                 if not d.startswith("/") or any(ord(c) < 32 for c in d)]
    if len(spec.disks) + bool(spec.seed) > MAX_DISKS:
        problems.append(f"a domain has at most {MAX_DISKS} disks")
    problems += [f"bad disk serial {s!r}" for s in spec.disk_serials if not _SERIAL.fullmatch(s)]
    if spec.seed and (not spec.seed.startswith("/") or any(ord(c) < 32 for c in spec.seed)):
        problems.append(f"the seed must be an absolute path, not {spec.seed!r}")
    if spec.cdrom and (not spec.cdrom.startswith("/") or any(ord(c) < 32 for c in spec.cdrom)):
        problems.append(f"the CD must be an absolute device path, not {spec.cdrom!r}")
    if spec.cdrom and spec.kernel:
        problems.append("a CD to boot from and a kernel to boot directly exclude each other")
    for nic in spec.nics:
        if not _MAC.fullmatch(nic.mac):
            problems.append(f"bad MAC address {nic.mac!r}")
        if not _BRIDGE.fullmatch(nic.bridge):
            problems.append(f"bad bridge name {nic.bridge!r}")
        if nic.vlan is not None and not (1 <= nic.vlan <= 4094):
            problems.append(f"bad VLAN {nic.vlan!r}")
    if problems:
        raise DriverError("; ".join(problems), permanent=True)


# --- what a host and its domains' devices say --------------------------------------------------


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    hypervisor: str  # libvirt's driver name: "QEMU", "Xen", "TEST"
    free_memory_bytes: int
    cpus: int


def host_info(uri: str, *, timeout: float = 30) -> HostInfo:
    """What a hypervisor host says about itself: it answers, which driver, free memory."""

    def call(conn: libvirt.virConnect) -> HostInfo:
        return HostInfo(conn.getHostname(), conn.getType(), int(conn.getFreeMemory()), int(conn.getInfo()[2]))

    return with_connection(uri, "host info", timeout, call)


def interface_macs(uri: str, *, timeout: float = 30) -> dict[str, tuple[str, ...]]:
    """{domain name: the MACs of its network interfaces} for every domain the hypervisor knows."""

    def call(conn: libvirt.virConnect) -> dict[str, tuple[str, ...]]:
        found = {}
        for dom in conn.listAllDomains(0):
            try:
                root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
            except (libvirt.libvirtError, ET.ParseError):
                continue  # vanished while listing, or nothing to read
            found[dom.name()] = tuple(sorted(m.get("address", "").lower()
                                             for m in root.findall("devices/interface/mac")))
        return found

    return with_connection(uri, "list interface MACs", timeout, call)


def disk_sources(uri: str, name: str, *, timeout: float = 30) -> list[str]:
    """The block devices and files the running domain's disks use."""

    def call(conn: libvirt.virConnect) -> list[str]:
        root = ET.fromstring(lookup_or_fail(conn, uri, name).XMLDesc(0))  # noqa: S314 - libvirt's own XML
        return [source.get("dev") or source.get("file") or "" for source in root.findall("devices/disk/source")]

    return with_connection(uri, f"disks of {name!r}", timeout, call)


def plug_disk(uri: str, name: str, device: str, serial: str, *, timeout: float = 60) -> None:
    """Hot-plug the block device into the running domain, and into its definition, as a disk of the
    domain's flavour on the next free target name (the guest finds it by its serial, not by its name)."""
    if not device.startswith("/") or any(ord(c) < 32 for c in device) or not _SERIAL.fullmatch(serial):
        raise DriverError(f"bad disk {device!r} / serial {serial!r}", permanent=True)

    def call(conn: libvirt.virConnect) -> None:
        dom = lookup_or_fail(conn, uri, name)
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
        flavour = hypervisors.flavour(root.get("type", ""))
        taken = {t.get("dev") for t in root.findall("devices/disk/target")}
        target = next(name for name in (_disk_name(flavour, i) for i in range(MAX_DISKS)) if name not in taken)
        disk = _block_disk(flavour, device, target, serial)
        dom.attachDeviceFlags(ET.tostring(disk, encoding="unicode"),
                              libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    with_connection(uri, f"plug {device} into {name!r}", timeout, call)


@dataclass(frozen=True)
class VncDisplay:
    address: str  # where it listens on the CPU server (the loopback, VNC_LISTEN)
    port: int


def vnc_display(uri: str, name: str, *, timeout: float = 20) -> VncDisplay:
    """The running domain's VNC display, from its live XML. DriverError if it has none (not
    running, or defined before the panel gave its guests one: it gets one at its next start)."""

    def call(conn: libvirt.virConnect) -> VncDisplay:
        dom = lookup_or_fail(conn, uri, name)
        if not dom.isActive():
            raise DriverError(f"{uri}: {name!r} is not running", permanent=True)
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
        graphics = root.find("devices/graphics[@type='vnc']")
        port = int(graphics.get("port", "-1")) if graphics is not None else -1
        if port <= 0:
            raise DriverError(f"{uri}: {name!r} has no VNC display", permanent=True)
        listen = graphics.find("listen")
        address = (listen.get("address") if listen is not None else None) or graphics.get("listen") or VNC_LISTEN
        return VncDisplay(address, port)

    return with_connection(uri, f"VNC display of {name!r}", timeout, call)

