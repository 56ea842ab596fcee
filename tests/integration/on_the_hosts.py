"""What the hosts themselves say, asked directly (never through the panel's own view of them)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

from drivers import hypervisor, vblade
from hosts.models import CpuServer, DiskServer
from hosts.targets import ssh_target
from jobs.follow import follow
from jobs.models import Job
from lab.guests import busy


def domain_state(uri: str, name: str) -> int | None:
    """libvirt's state of the domain on that hypervisor, or None if it does not know it."""
    conn = libvirt.open(uri)
    try:
        return conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def busy_guest_ticks(uri: str, name: str) -> int:
    """The busy guest's timer-tick counter, read from its RAM: it grows only while the guest runs."""
    conn = libvirt.open(uri)
    try:
        raw = conn.lookupByName(name).memoryPeek(busy.TICKS_ADDRESS, 4, libvirt.VIR_MEMORY_PHYSICAL)
        return int.from_bytes(raw, "little")
    finally:
        conn.close()


def clear_domain(name: str) -> None:
    """Destroy and undefine a domain on every CPU server (left by an interrupted earlier run)."""
    for cpu in CpuServer.objects.all():
        hypervisor.destroy(cpu.libvirt_uri, name)
        hypervisor.undefine(cpu.libvirt_uri, name)


def clear_exports(vm_name: str) -> None:
    """Stop the exports of a VM's volumes and delete the volumes on every disk server (left by an
    interrupted earlier run: the disk servers restore persisted exports at every boot)."""
    for disk in DiskServer.objects.all():
        target = ssh_target(disk)
        for export in vblade.list_exports(target):
            if Path(export.path).name.startswith(f"{vm_name}-e"):
                vblade.stop_export(target, export.shelf, export.slot)
                vblade.remove_volume(target, export.path)


def succeeded(job: Job) -> Job:
    """Wait for the job; it must succeed."""
    job = follow(job.pk, lambda _line: None)
    assert job.state == "succeeded", job.message
    return job


@contextmanager
def guests_on_cpu2(names: tuple[str, ...]) -> Iterator[list]:
    """Small guests on cpu2 for a test that pulls its plug; afterwards the lab is whole again, the
    stale definitions the dead host kept are gone, every host is up and the guests are deleted."""
    from hosts.choices import HostState
    from lab import cluster
    from vms.models import VirtualMachine
    from vms.services import VmRequest, create_vm, delete_vm

    for name in names:
        job = create_vm(VmRequest(name=name, vcpus=1, memory_mib=64, disk_mib=16, cpu_server="cpu2"))
        assert follow(job.pk, lambda _line: None).state == "succeeded"
    yield [VirtualMachine.objects.get(name=name) for name in names]
    cluster.up()
    cpu2 = CpuServer.objects.get(name="cpu2")
    for name in names:
        hypervisor.destroy(cpu2.libvirt_uri, f"xa-{name}")
        hypervisor.undefine(cpu2.libvirt_uri, f"xa-{name}")
    CpuServer.objects.update(state=HostState.UP, missed_checks=0)
    for name in names:
        if VirtualMachine.objects.filter(name=name).exists():
            follow(delete_vm(name).pk, lambda _line: None)
