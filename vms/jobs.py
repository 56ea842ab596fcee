"""The steps of VM jobs. Each step is idempotent where it can be, and undoes what it did."""
from __future__ import annotations

import time

from drivers import aoe, hypervisor, vblade
from hosts.models import CpuServer
from hosts.targets import ssh_target
from jobs.choices import LogLevel
from jobs.runner import JobContext, JobFailed, Step, job_kind
from storage.choices import ExportState, MirrorState
from storage.models import SECTORS_PER_MIB, AoEExport, Mirror
from vms.choices import VmState
from vms.events import set_vm_state
from vms.models import VirtualMachine
from vms.placement import server_load


def _vm(ctx: JobContext) -> VirtualMachine:
    if ctx.job.vm_id is None:
        raise JobFailed(f"VM {ctx.job.target_name} no longer exists")
    return VirtualMachine.objects.select_related("cpu_server").get(pk=ctx.job.vm_id)


def _legs(vm: VirtualMachine) -> list[AoEExport]:
    return list(AoEExport.objects.filter(mirror__vm=vm).select_related("disk_server").order_by("leg"))


def domain_spec(vm: VirtualMachine, legs: list[AoEExport]) -> hypervisor.DomainSpec:
    return hypervisor.DomainSpec(
        name=vm.domain_name, uuid=str(vm.domain_uuid), vcpus=vm.vcpus, memory_mib=vm.memory_mib,
        disks=tuple(leg.device_path for leg in legs), hypervisor=vm.cpu_server.hypervisor,
        kernel=vm.kernel_path, initrd=vm.initrd_path, cmdline=vm.kernel_cmdline,
    )


# --- vm.create --------------------------------------------------------------------------------

def check_reservation(ctx: JobContext) -> None:
    vm = _vm(ctx)
    cpu = vm.cpu_server
    legs = _legs(vm)
    free = server_load(cpu).free_mib
    ctx.log(
        f"{vm.name}: {vm.vcpus} vCPU, {vm.memory_mib} MiB on {cpu.name} "
        f"({free} MiB of {cpu.memory_mib} MiB left after it)",
        cpu_server=cpu.name, free_memory_mib=free,
    )
    for leg in legs:
        ctx.log(f"leg {leg.leg}: {leg.name} on {leg.disk_server.name}, {leg.size_mib} MiB at {leg.backing_path}")
    for shortfall in ctx.job.params.get("n_plus_one_override", []):
        who = ctx.job.user.username if ctx.job.user else "the requester"
        ctx.log(f"N+1 broken on purpose ({who} overrode the check): {shortfall}", LogLevel.WARNING)


def release_reservation(ctx: JobContext) -> None:
    VirtualMachine.objects.filter(pk=ctx.job.vm_id).delete()


def create_volumes(ctx: JobContext) -> None:
    created: list[int] = ctx.data.setdefault("volumes", [])
    for leg in _legs(_vm(ctx)):
        vblade.create_volume(ssh_target(leg.disk_server), leg.backing_path, leg.size_mib)
        created.append(leg.pk)
        ctx.log(f"created {leg.size_mib} MiB volume {leg.backing_path} on {leg.disk_server.name}")


def remove_volumes(ctx: JobContext) -> None:
    for leg in AoEExport.objects.filter(pk__in=ctx.data.get("volumes", [])).select_related("disk_server"):
        vblade.remove_volume(ssh_target(leg.disk_server), leg.backing_path)
        ctx.log(f"removed {leg.backing_path} on {leg.disk_server.name}")


def start_exports(ctx: JobContext) -> None:
    started: list[int] = ctx.data.setdefault("exports", [])
    for leg in _legs(_vm(ctx)):
        disk = leg.disk_server
        running = vblade.start_export(
            ssh_target(disk),
            vblade.ExportSpec(shelf=leg.shelf, slot=leg.slot, interface=disk.san_interface, path=leg.backing_path),
        )
        started.append(leg.pk)
        AoEExport.objects.filter(pk=leg.pk).update(state=ExportState.EXPORTED)
        ctx.log(f"{leg.name} exported by vblade (pid {running.pid}) on {disk.name}:{disk.san_interface}")


def stop_exports(ctx: JobContext) -> None:
    for leg in AoEExport.objects.filter(pk__in=ctx.data.get("exports", [])).select_related("disk_server"):
        vblade.stop_export(ssh_target(leg.disk_server), leg.shelf, leg.slot)
        AoEExport.objects.filter(pk=leg.pk).update(state=ExportState.STOPPED)
        ctx.log(f"{leg.name} no longer exported")


def verify_exports(ctx: JobContext) -> None:
    vm = _vm(ctx)
    probe_legs(ctx, vm, vm.cpu_server)


def probe_legs(ctx: JobContext, vm: VirtualMachine, cpu: CpuServer) -> None:
    """Both legs answer on the wire from `cpu`, once each, with the right size."""
    legs = _legs(vm)
    # One Query Config for the slot on every shelf: both legs answer within one listening window,
    # and a second target answering to the same shelf.slot (a misconfigured SAN) shows up too.
    answers = aoe.probe(ssh_target(cpu), cpu.san_interface, None, legs[0].slot, identify=True)
    for leg in legs:
        mine = [a for a in answers if (a.shelf, a.slot) == (leg.shelf, leg.slot)]
        if not mine:
            raise JobFailed(f"{leg.name} does not answer an AoE query from {cpu.name}:{cpu.san_interface}")
        if len(mine) > 1:
            macs = ", ".join(a.mac for a in mine)
            raise JobFailed(f"{leg.name} is answered by {len(mine)} targets on the SAN ({macs})")
        answer = mine[0]
        expected = leg.size_mib * SECTORS_PER_MIB
        if answer.sectors != expected:
            raise JobFailed(f"{leg.name} reports {answer.sectors} sectors from {cpu.name}, expected {expected}")
        ctx.log(f"{leg.name} answers from {cpu.name}: MAC {answer.mac}, {answer.sectors} sectors",
                mac=answer.mac, sectors=answer.sectors)
    # Both legs answer on the wire: that is the wire's view of a new mirror. A mirror already judged
    # (degraded or resyncing after a disk server's failure) is left to ha.storage_health.
    Mirror.objects.filter(vm=vm, state=MirrorState.UNKNOWN).update(state=MirrorState.HEALTHY)


def attach_exports(ctx: JobContext) -> None:
    vm = _vm(ctx)
    ctx.data["attached_on"] = vm.cpu_server.pk
    for leg in _legs(vm):
        path = aoe.attach(ssh_target(vm.cpu_server), leg.shelf, leg.slot)
        ctx.log(f"{leg.name} is {path} on {vm.cpu_server.name}")


def detach_exports(ctx: JobContext) -> None:
    vm = _vm(ctx)
    for leg in _legs(vm):
        aoe.detach(ssh_target(vm.cpu_server), leg.shelf, leg.slot)


def define_domain(ctx: JobContext) -> None:
    vm = _vm(ctx)
    xml = hypervisor.domain_xml(domain_spec(vm, _legs(vm)))
    info = hypervisor.define(vm.cpu_server.libvirt_uri, xml)
    ctx.data["defined"] = True
    ctx.log(f"domain {info.name} defined on {vm.cpu_server.name}")


def undefine_domain(ctx: JobContext) -> None:
    vm = _vm(ctx)
    hypervisor.undefine(vm.cpu_server.libvirt_uri, vm.domain_name)


def start_domain(ctx: JobContext) -> None:
    vm = _vm(ctx)
    info = hypervisor.start(vm.cpu_server.libvirt_uri, vm.domain_name)
    ctx.log(f"domain {info.name} is {info.state}")


def destroy_domain(ctx: JobContext) -> None:
    vm = _vm(ctx)
    hypervisor.destroy(vm.cpu_server.libvirt_uri, vm.domain_name)


def confirm_running(ctx: JobContext) -> None:
    vm = _vm(ctx)
    info = hypervisor.domain_info(vm.cpu_server.libvirt_uri, vm.domain_name)
    if info is None or info.state != "running":
        raise JobFailed(f"{vm.domain_name} is {info.state if info else 'not defined'} on {vm.cpu_server.name}")
    set_vm_state(vm.pk, VmState.RUNNING, booted=True)
    ctx.data["result"] = f"{vm.name} runs on {vm.cpu_server.name}"
    ctx.log(ctx.data["result"])


@job_kind("vm.create")
def plan_create(ctx: JobContext) -> list[Step]:
    vm = _vm(ctx)
    cpu = vm.cpu_server.name
    return [
        Step("Check and reserve name, memory and slot", check_reservation, release_reservation),
        Step("Create the backing volume on each disk server", create_volumes, remove_volumes),
        Step("Export each volume with vblade", start_exports, stop_exports),
        Step(f"Verify both exports answer from {cpu}", verify_exports),
        Step(f"Attach both exports on {cpu}", attach_exports, detach_exports),
        Step(f"Define the domain on {cpu}", define_domain, undefine_domain),
        Step("Start the domain", start_domain, destroy_domain),
        Step("Confirm it runs", confirm_running),
    ]


# --- vm.delete --------------------------------------------------------------------------------

def forget_vm(ctx: JobContext) -> None:
    vm = _vm(ctx)
    name = vm.name
    vm.delete()
    ctx.data["result"] = f"{name} deleted: domain, exports and volumes removed"
    ctx.log(f"{name} removed from the inventory")


def stop_all_exports(ctx: JobContext) -> None:
    ctx.data["exports"] = [leg.pk for leg in _legs(_vm(ctx))]
    stop_exports(ctx)


def remove_all_volumes(ctx: JobContext) -> None:
    ctx.data["volumes"] = [leg.pk for leg in _legs(_vm(ctx))]
    remove_volumes(ctx)


@job_kind("vm.delete")
def plan_delete(ctx: JobContext) -> list[Step]:
    vm = _vm(ctx)
    where = vm.cpu_server.name if vm.cpu_server else "its CPU server"
    # Deleting only goes forward: every step is idempotent, so a failed delete is finished by
    # running it again.
    return [
        Step(f"Force off the domain on {where}", destroy_domain),
        Step("Undefine the domain", undefine_domain),
        Step(f"Detach the exports on {where}", detach_exports),
        Step("Stop both exports", stop_all_exports),
        Step("Remove both backing volumes", remove_all_volumes),
        Step("Forget the VM", forget_vm),
    ]


# --- lifecycle: start, shut down, reboot, force off ---------------------------------------------

SHUTDOWN_POLL_SECONDS = 1.0
SHUTDOWN_REPORT_EVERY = 5


def ask_shutdown(ctx: JobContext) -> None:
    vm = _vm(ctx)
    info = hypervisor.shutdown(vm.cpu_server.libvirt_uri, vm.domain_name)
    ctx.log(f"ACPI shutdown requested; {vm.domain_name} is {info.state}")


def wait_or_force_off(ctx: JobContext) -> None:
    """Wait for the guest to power itself off; force it off when the operator's timeout is up."""
    vm = _vm(ctx)
    uri = vm.cpu_server.libvirt_uri
    timeout = int(ctx.job.params.get("timeout_s", 60))
    deadline = time.monotonic() + timeout
    reported = None
    while True:
        info = hypervisor.domain_info(uri, vm.domain_name)
        if info is None or info.state != "running":
            ctx.log(f"{vm.name} shut down by itself ({info.state if info else 'gone'})")
            break
        left = deadline - time.monotonic()
        if left <= 0:
            hypervisor.destroy(uri, vm.domain_name)
            ctx.log(f"{vm.name} did not shut down within {timeout} s: forced off", LogLevel.WARNING)
            break
        whole = int(left)
        if reported is None or reported - whole >= SHUTDOWN_REPORT_EVERY:
            reported = whole
            ctx.log(f"waiting for the guest to shut down: forced off in {whole} s", force_off_in_s=whole)
        ctx.check_cancel()
        time.sleep(min(SHUTDOWN_POLL_SECONDS, max(left, 0.1)))
    set_vm_state(ctx.job.vm_id, VmState.STOPPED)
    ctx.data["result"] = f"{vm.name} is stopped"


def force_off(ctx: JobContext) -> None:
    vm = _vm(ctx)
    hypervisor.destroy(vm.cpu_server.libvirt_uri, vm.domain_name)
    set_vm_state(ctx.job.vm_id, VmState.STOPPED)
    ctx.data["result"] = f"{vm.name} forced off"
    ctx.log(ctx.data["result"])


def _start_steps(cpu: str) -> list[Step]:
    # Exports stay attached while a guest is stopped; attaching again is harmless and brings
    # them back if the CPU server restarted meanwhile.
    return [
        Step(f"Attach both exports on {cpu}", attach_exports),
        Step("Start the domain", start_domain, destroy_domain),
        Step("Confirm it runs", confirm_running),
    ]


def _shutdown_steps(ctx: JobContext) -> list[Step]:
    timeout = int(ctx.job.params.get("timeout_s", 60))
    return [
        Step("Ask the guest to shut down (ACPI)", ask_shutdown),
        Step(f"Wait for it to stop (forced off after {timeout} s)", wait_or_force_off),
    ]


@job_kind("vm.start")
def plan_start(ctx: JobContext) -> list[Step]:
    return _start_steps(_vm(ctx).cpu_server.name)


@job_kind("vm.shutdown")
def plan_shutdown(ctx: JobContext) -> list[Step]:
    return _shutdown_steps(ctx)


@job_kind("vm.reboot")
def plan_reboot(ctx: JobContext) -> list[Step]:
    return [*_shutdown_steps(ctx), *_start_steps(_vm(ctx).cpu_server.name)]


@job_kind("vm.force_off")
def plan_force_off(ctx: JobContext) -> list[Step]:
    return [Step("Force the domain off (power cut)", force_off)]
