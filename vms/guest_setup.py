"""What a VM made from an image needs on the CPU server that runs it, and in its domain XML.

The same for every way a VM lands on a CPU server (create, start, live migration, failover restart,
evacuation): `prepare_host` attaches its two legs (and the ISO in its CD drive), puts its image's
kernel and initramfs and its seed (first-boot settings, from the database: never only on the host
that first booted it) there, and checks its networks' bridges exist. `domain_spec` is its domain's
definition; `boot` says how its domain boots. docs/images.md.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from drivers import aoe, hostnet, hypervisor
from drivers import images as host_files
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer
from hosts.targets import ssh_target
from images import seed
from jobs.runner import JobFailed
from networks.models import BridgeType
from storage.choices import ExportState
from storage.models import AoEExport
from vms.models import VirtualMachine

Log = Callable[[str], object]


def legs_of(vm: VirtualMachine) -> list[AoEExport]:
    """The VM's two legs (its mirror's exports), leg 0 first."""
    return list(AoEExport.objects.filter(mirror__vm=vm).select_related("disk_server").order_by("leg"))


def leg_serial(leg: AoEExport) -> str:
    """What the guest's initramfs and leg watcher look for: leg N is the disk with this serial,
    whatever name the guest's kernel gives it (a leg missing at boot shifts the names)."""
    return f"xenaoe-leg{leg.leg}"

# Quiet, and without the drivers a VM never uses (they cost seconds of an emulated boot).
BOOT_CMDLINE = ("console=ttyS0 quiet module_blacklist=pcspkr,iTCO_wdt,ahci,psmouse,kvm,kvm_intel,kvm_amd,"
                "floppy,bochs,snd_pcsp")


def seed_path(vm: VirtualMachine) -> str:
    return f"{settings.CPU_SEED_DIR.rstrip('/')}/{vm.domain_name}.iso"


def boot(vm: VirtualMachine, legs: list[AoEExport], cdrom: AoEExport | None = None) -> dict[str, object]:
    """DomainSpec fields for how the VM boots from `legs` (both, or the one that answers): its image's
    kernel and initramfs with the root array's UUID (and, until the array exists, the word to create
    it), its legs' serials, its seed. A VM installing from an ISO: the CD (`cdrom`, the ISO's export
    attached on its CPU server) first, then its first leg."""
    if vm.image_id is None:
        if vm.iso_id is None:
            return {"kernel": vm.kernel_path, "initrd": vm.initrd_path, "cmdline": vm.kernel_cmdline}
        if cdrom is None:
            raise DriverError(f"{vm.name} installs from {vm.iso.name}, and no copy of it is attached")
        return {"cdrom": cdrom.device_path}
    mirror = vm.mirror
    cmdline = f"{BOOT_CMDLINE} xenaoe.md={mirror.md_uuid_mdadm}" + ("" if mirror.md_created else " xenaoe.md_create=1")
    return {"kernel": f"{vm.image.boot_dir}/vmlinuz", "initrd": f"{vm.image.boot_dir}/initrd.img",
            "cmdline": cmdline, "disk_serials": tuple(leg_serial(leg) for leg in legs), "seed": seed_path(vm)}


def domain_spec(vm: VirtualMachine, legs: list[AoEExport], cdrom: AoEExport | None = None,
                cpu: CpuServer | None = None) -> hypervisor.DomainSpec:
    """The VM's domain as `cpu` (default: the CPU server it is recorded on) defines it, booting from
    `legs` (both, or the one that answers) and, installing from an ISO, `cdrom`."""
    return hypervisor.DomainSpec(
        name=vm.domain_name, uuid=str(vm.domain_uuid), vcpus=vm.vcpus, memory_mib=vm.memory_mib,
        disks=tuple(leg.device_path for leg in legs), hypervisor=(cpu or vm.cpu_server).hypervisor,
        nics=nic_specs(vm), **boot(vm, legs, cdrom),  # type: ignore[arg-type]
    )


def nic_specs(vm: VirtualMachine) -> tuple[hypervisor.NicSpec, ...]:
    return tuple(
        hypervisor.NicSpec(mac=nic.mac, bridge=nic.network.bridge, vlan=nic.network.vlan,
                           openvswitch=nic.network.bridge_type == BridgeType.OPENVSWITCH)
        for nic in vm.nics.select_related("network").order_by("index")
    )


def seed_settings(vm: VirtualMachine) -> seed.SeedSettings:
    nics = []
    dns: list[str] = []
    for nic in vm.nics.select_related("network").order_by("index"):
        network = nic.network
        nics.append(seed.NicSettings(mac=nic.mac, address=nic.address_with_prefix,
                                     gateway=network.gateway or "" if nic.ip else ""))
        dns += [server for server in network.dns_servers if server not in dns]
    return seed.SeedSettings(instance_id=str(vm.domain_uuid), hostname=vm.name, login_user=vm.image.login_user,
                             ssh_keys=tuple(vm.ssh_key_list), password_hash=vm.password_hash, dns=tuple(dns),
                             nics=tuple(nics))


def missing_bridges(vm: VirtualMachine, cpu: CpuServer) -> list[str]:
    """The bridges the VM's NICs need that `cpu` lacks (asked over SSH)."""
    wanted = sorted({nic.network.bridge for nic in vm.nics.select_related("network")})
    there = hostnet.interfaces(ssh_target(cpu), wanted)
    return [bridge for bridge in wanted if bridge not in there]


def check_bridges(vm: VirtualMachine, cpu: CpuServer, log: Log) -> None:
    missing = missing_bridges(vm, cpu)
    if missing:
        raise JobFailed(f"{cpu.name} has no bridge {', '.join(missing)} for {vm.name}'s network: "
                        "create it there first (docs/networks.md)")
    for nic in vm.nics.select_related("network").order_by("index"):
        log(f"eth{nic.index}: {nic.mac} on {nic.network.name} (bridge {nic.network.bridge} is on {cpu.name})"
            + (f", {nic.ip}" if nic.ip else ""))


def put_boot_files(vm: VirtualMachine, cpu: CpuServer, log: Log) -> None:
    """The image's kernel and initramfs, and the VM's seed, on `cpu` (sent only if they differ)."""
    if vm.image_id is None:
        return
    image = vm.image
    store = image.store_dir
    files = {f"{image.boot_dir}/vmlinuz": (store / "vmlinuz").read_bytes(),
             f"{image.boot_dir}/initrd.img": (store / "initrd.img").read_bytes(),
             seed_path(vm): seed.iso(seed_settings(vm))}
    sent = host_files.put_files(ssh_target(cpu), files)
    kept = len(files) - len(sent)
    log(f"boot files of {image.name} and {vm.name}'s seed on {cpu.name}"
        + (f" ({len(sent)} sent, {kept} already there)" if kept else f" ({len(sent)} sent)"))


def attach_legs(vm: VirtualMachine, legs: list[AoEExport], cpu: CpuServer, log: Log, *,
                degraded_ok: bool = False) -> list[AoEExport]:
    """Attach the legs on `cpu`; returns those attached. With `degraded_ok` (a VM whose array exists,
    being started), one leg that does not answer is left out and the VM boots on the other: a disk
    server down must not keep the guest down. Both missing: DriverError."""
    attached, missing = [], []
    for leg in legs:
        try:
            path = aoe.attach(ssh_target(cpu), leg.shelf, leg.slot)
        except DriverError as exc:
            if not degraded_ok:
                raise
            missing.append((leg, exc))
            continue
        attached.append(leg)
        log(f"{leg.name} is {path} on {cpu.name}")
    if missing and not attached:
        raise DriverError(f"no leg of {vm.name} answers on {cpu.name}: "
                          + "; ".join(f"{leg.name} on {leg.disk_server.name}: {exc}" for leg, exc in missing))
    for leg, exc in missing:
        log(f"{leg.name} on {leg.disk_server.name} does not answer ({exc}): {vm.name} boots on its other leg, "
            "degraded; the leg is put back when its disk server returns")
    return attached


def iso_exports(vm: VirtualMachine) -> list[AoEExport]:
    """The exports of the ISO in the VM's CD drive, one per disk server that serves a copy (none
    when the drive is empty), those of disk servers that are up first."""
    if vm.iso_id is None:
        return []
    exports = AoEExport.objects.filter(image_copy__image_id=vm.iso_id, state=ExportState.EXPORTED)
    return sorted(exports.select_related("disk_server"),
                  key=lambda e: (e.disk_server.state in (HostState.DEAD, HostState.FENCED), e.disk_server.name))


def attach_iso(vm: VirtualMachine, cpu: CpuServer, log: Log, *, wanted: str = "") -> AoEExport | None:
    """Attach on `cpu` a copy of the ISO in the VM's CD drive: the first that answers, or the one
    whose device is `wanted` (the drive's source on another server: a live migration needs the same
    path). All copies are read-only and shared by every VM installing from the ISO; they stay
    attached. None when the drive is empty; DriverError when no copy answers."""
    exports = [e for e in iso_exports(vm) if not wanted or e.device_path == wanted]
    if vm.iso_id is None or (wanted and not exports):
        return None
    problems = []
    for export in exports:
        try:
            aoe.attach(ssh_target(cpu), export.shelf, export.slot)
        except DriverError as exc:
            problems.append(f"{export.name} on {export.disk_server.name}: {exc}")
            continue
        log(f"{vm.iso.name} (CD) is {export.device_path} on {cpu.name}, from {export.disk_server.name}")
        return export
    raise DriverError(f"no copy of {vm.iso.name} answers on {cpu.name} for {vm.name}'s CD drive: "
                      + ("; ".join(problems) or "it is served by no disk server"))


@dataclass(frozen=True)
class Prepared:
    legs: list[AoEExport]  # attached: both, or one when a disk server is down and the array exists
    cdrom: AoEExport | None  # the ISO's copy in the CD drive, if the VM has one


def prepare_host(vm: VirtualMachine, cpu: CpuServer, log: Log, *, degraded_ok: bool = False) -> Prepared:
    """Everything `cpu` needs before the VM can run there."""
    check_bridges(vm, cpu, log)
    put_boot_files(vm, cpu, log)
    attached = attach_legs(vm, legs_of(vm), cpu, log, degraded_ok=degraded_ok and vm.mirror.md_created)
    return Prepared(attached, attach_iso(vm, cpu, log))


def plug_missing_legs(vm: VirtualMachine, legs: list[AoEExport], log: Log) -> list[str]:
    """Give a running guest back the legs it booted without (their disk server has returned): attach
    each on its CPU server and hot-plug it, live and into the definition. The guest's leg watcher
    re-adds it to the array. Returns the legs plugged."""
    cpu = vm.cpu_server
    present = set(hypervisor.disk_sources(cpu.libvirt_uri, vm.domain_name))
    plugged = []
    for leg in legs:
        if leg.device_path in present:
            continue
        aoe.attach(ssh_target(cpu), leg.shelf, leg.slot)
        hypervisor.plug_disk(cpu.libvirt_uri, vm.domain_name, leg.device_path, leg_serial(leg))
        plugged.append(leg.name)
        log(f"{leg.name} plugged back into {vm.name} on {cpu.name}")
    return plugged
