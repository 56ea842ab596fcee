"""Bring a VM up on a CPU server from its disks: prepare the server, define the domain, start it,
confirm it runs and record that it does.

The same acts for every way a guest boots on a server: a new VM's create and a start (vms/steps.py)
run them as separate job steps, each logged and undone on its own when a later one fails; the
failover's restart on a survivor (ha/failover.py) runs them at once with `bring_up`, for several
guests at a time. A live migration moves a running guest instead (vms/migration.py).
"""
from __future__ import annotations

from django.db import transaction

from drivers import hypervisor
from drivers.errors import DriverError
from hosts.models import CpuServer
from jobs.runner import JobFailed
from storage.models import AoEExport
from vms import guest_setup
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.states import set_vm_state

# libvirt's states of a domain that holds its disks open: never undefined behind a failed start.
ACTIVE = frozenset({"running", "paused", "blocked"})


def define(vm: VirtualMachine, cpu: CpuServer, legs: list[AoEExport], cdrom: AoEExport | None,
           log: guest_setup.Log) -> hypervisor.DomainInfo:
    """The guest's own definition, written from the inventory for `cpu`'s hypervisor."""
    info = hypervisor.define(cpu.libvirt_uri, hypervisor.domain_xml(guest_setup.domain_spec(vm, legs, cdrom, cpu)))
    log(f"domain {info.name} defined on {cpu.name}")
    return info


def start(vm: VirtualMachine, cpu: CpuServer, log: guest_setup.Log) -> hypervisor.DomainInfo:
    info = hypervisor.start(cpu.libvirt_uri, vm.domain_name)
    log(f"domain {info.name} is {info.state}")
    return info


def confirm_running(vm: VirtualMachine, cpu: CpuServer) -> None:
    """libvirt on `cpu` says the guest runs: the inventory records it there, running and booted.
    JobFailed otherwise."""
    info = hypervisor.domain_info(cpu.libvirt_uri, vm.domain_name)
    if info is None or info.state != "running":
        raise JobFailed(f"{vm.domain_name} is {info.state if info else 'not defined'} on {cpu.name}")
    with transaction.atomic():
        if vm.cpu_server_id != cpu.pk:
            VirtualMachine.objects.filter(pk=vm.pk).update(cpu_server=cpu)
        set_vm_state(vm.pk, VmState.RUNNING, booted=True)


def bring_up(vm: VirtualMachine, cpu: CpuServer, log: guest_setup.Log, *, degraded_ok: bool = False) -> None:
    """Every act at once, for a guest that does not run anywhere. A start that fails leaves no
    stopped definition behind on `cpu` (cluster verify would report it); the attached legs stay, as
    a stopped guest's do. `degraded_ok`: a guest whose array exists may boot on its one leg that answers."""
    prepared = guest_setup.prepare_host(vm, cpu, log, degraded_ok=degraded_ok)
    define(vm, cpu, prepared.legs, prepared.cdrom, log)
    try:
        start(vm, cpu, log)
        confirm_running(vm, cpu)
    except (DriverError, JobFailed):
        try:
            info = hypervisor.domain_info(cpu.libvirt_uri, vm.domain_name)
            if info is not None and info.state not in ACTIVE:
                hypervisor.undefine(cpu.libvirt_uri, vm.domain_name)
        except DriverError:
            pass  # the start's failure is the one to report
        raise
