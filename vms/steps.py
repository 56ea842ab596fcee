"""The steps of VM jobs. Each step is idempotent where it can be, and undoes what it did."""
from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from django.conf import settings

from drivers import aoe, guest_agent, hypervisor, vblade
from drivers import images as images_driver
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer
from hosts.targets import ssh_target
from images.choices import CopyState
from jobs.choices import LogLevel
from jobs.runner import JobContext, JobFailed, Later, Step, job_kind
from storage import access as storage_access
from storage.choices import ExportState, MirrorState
from storage.guest_health import GUEST_DISKS, record_view, view_from_mdstat
from storage.models import SECTORS_PER_MIB, AoEExport, Mirror
from vms import bring_up, guest_setup
from vms.choices import VmState
from vms.guest_setup import legs_of
from vms.job_params import VmCreateParams, VmDeleteParams, VmEjectParams, VmPowerParams
from vms.models import VirtualMachine
from vms.placement import server_load
from vms.states import set_vm_state


def job_vm(ctx: JobContext) -> VirtualMachine:
    """The VM a job acts on, with its CPU server; JobFailed when it is gone."""
    if ctx.job.vm_id is None:
        raise JobFailed(f"VM {ctx.job.target_name} no longer exists")
    return VirtualMachine.objects.select_related("cpu_server").get(pk=ctx.job.vm_id)


# --- vm.create --------------------------------------------------------------------------------

def log_reservation(ctx: JobContext) -> None:
    """create_vm reserved the name, memory, slot and volumes in the request (vms/services.py): the
    first step writes down what it holds, where the job's page shows it; its undo gives it back."""
    vm = job_vm(ctx)
    cpu = vm.cpu_server
    legs = legs_of(vm)
    free = server_load(cpu).free_mib
    ctx.log(
        f"{vm.name}: {vm.vcpus} vCPU, {vm.memory_mib} MiB on {cpu.name} "
        f"({free} MiB of {cpu.memory_mib} MiB left after it)",
        cpu_server=cpu.name, free_memory_mib=free,
    )
    for leg in legs:
        ctx.log(f"leg {leg.leg}: {leg.name} on {leg.disk_server.name}, {leg.size_mib} MiB at {leg.backing_path}")
    params = VmCreateParams.of(ctx.job)
    for shortfall in params.n_plus_one_override:
        who = ctx.job.user.username if ctx.job.user else "the requester"
        ctx.log(f"N+1 broken on purpose ({who} overrode the check): {shortfall}", LogLevel.WARNING)
    for broken in params.anti_affinity_broken:
        ctx.log(broken, LogLevel.WARNING)


def release_reservation(ctx: JobContext) -> None:
    """Forget the VM: the undo of the reservation, and what a create cancelled before it began
    gives back (quota, memory, slot). Not while an undo before it failed: the rows are how cluster
    verify and a delete (which finishes the cleanup) find what is left on the hosts, and they keep
    the slot taken. The VM is marked failed instead."""
    if ctx.undo_failures:
        set_vm_state(ctx.job.vm_id, VmState.FAILED)
        ctx.log(f"{ctx.job.target_name} kept, marked failed: undoing {'; '.join(ctx.undo_failures)} failed, so "
                "volumes or exports may be left on the disk servers. Delete it to remove them.", LogLevel.ERROR)
        return
    VirtualMachine.objects.filter(pk=ctx.job.vm_id).delete()


@contextmanager
def _intent(ctx: JobContext, done: list[int], pk: int) -> Iterator[None]:
    """Record `pk` in `done` before the host call, so that the step's undo covers a call that
    acted and then timed out; forget it again if the host refused (a permanent DriverError: the
    remote scripts change nothing when they refuse), so that the undo never removes a volume or
    stops an export this job did not make."""
    done.append(pk)
    ctx.save()
    try:
        yield
    except DriverError as exc:
        if exc.permanent:
            done.remove(pk)
        raise


def create_volumes(ctx: JobContext) -> None:
    created: list[int] = ctx.data.setdefault("volumes", [])
    for leg in legs_of(job_vm(ctx)):
        with _intent(ctx, created, leg.pk):
            vblade.create_volume(ssh_target(leg.disk_server), leg.backing_path, leg.size_mib)
        ctx.log(f"created {leg.size_mib} MiB volume {leg.backing_path} on {leg.disk_server.name}")


def remove_volumes(ctx: JobContext) -> None:
    for leg in AoEExport.objects.filter(pk__in=ctx.data.get("volumes", [])).select_related("disk_server"):
        vblade.remove_volume(ssh_target(leg.disk_server), leg.backing_path)
        ctx.log(f"removed {leg.backing_path} on {leg.disk_server.name}")


def write_image(ctx: JobContext) -> None:
    """The image onto the start of each new volume, by each disk server from its own copy, both at
    once: two disk servers, two disks, no byte over the network."""
    vm = job_vm(ctx)
    image = vm.image
    copies = {c.disk_server_id: c for c in image.copies.filter(state=CopyState.READY)}
    legs = legs_of(vm)
    for leg in legs:
        if leg.disk_server_id not in copies:
            raise JobFailed(f"image {image.name} is not on {leg.disk_server.name} yet: "
                            f"copy it there first (manage.py image copy {image.name})")

    def write(leg: AoEExport) -> float:
        started = time.monotonic()
        images_driver.write_image(ssh_target(leg.disk_server), copies[leg.disk_server_id].path, leg.backing_path)
        return time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(legs), thread_name_prefix="write-image") as pool:
        writes = [(leg, pool.submit(write, leg)) for leg in legs]
    for leg, written in writes:
        ctx.log(f"{image.name} ({image.size_mib} MiB) written onto {leg.backing_path} by {leg.disk_server.name} "
                f"in {written.result():.1f} s")


def start_exports(ctx: JobContext) -> None:
    started: list[int] = ctx.data.setdefault("exports", [])
    for leg in legs_of(job_vm(ctx)):
        disk = leg.disk_server
        spec = vblade.ExportSpec(shelf=leg.shelf, slot=leg.slot, interface=disk.san_interface, path=leg.backing_path)
        try:
            with _intent(ctx, started, leg.pk):
                # With the MAC list storage_acl() gives: a host fenced through storage may still run old
                # guests that have this shelf.slot attached (a deleted VM's, reused).
                running = storage_access.start_export(ssh_target(disk), spec)
        except storage_access.UnsafeAcl as exc:
            raise JobFailed(f"{leg.name} not exported: {exc}") from exc
        AoEExport.objects.filter(pk=leg.pk).update(state=ExportState.EXPORTED)
        acl = f"MAC list {','.join(running.macs)}" if running.macs else "open to every initiator"
        ctx.log(f"{leg.name} exported by vblade (pid {running.pid}) on {disk.name}:{disk.san_interface}, {acl}")


def stop_exports(ctx: JobContext) -> None:
    for leg in AoEExport.objects.filter(pk__in=ctx.data.get("exports", [])).select_related("disk_server"):
        vblade.stop_export(ssh_target(leg.disk_server), leg.shelf, leg.slot)
        AoEExport.objects.filter(pk=leg.pk).update(state=ExportState.STOPPED)
        ctx.log(f"{leg.name} no longer exported")


def verify_exports(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    probe_legs(ctx, vm, vm.cpu_server)


def probe_legs(ctx: JobContext, vm: VirtualMachine, cpu: CpuServer) -> None:
    """Both legs answer on the wire from `cpu`, once each, with the right size."""
    legs = legs_of(vm)
    # One Query Config for the slot on every shelf: both legs answer within one listening window,
    # and a second target answering to the same shelf.slot (a misconfigured SAN) shows up too.
    answers = aoe.probe(ssh_target(cpu), cpu.san_interface, None, legs[0].slot, identify=True,
                        expect=[(leg.shelf, leg.slot) for leg in legs])
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
    vm = job_vm(ctx)
    ctx.data["attached_on"] = vm.cpu_server.pk
    ctx.save()
    # A start (not a create) boots on one leg if the other's disk server is down.
    prepared = guest_setup.prepare_host(vm, vm.cpu_server, ctx.log, degraded_ok=ctx.job.kind != "vm.create")
    ctx.data["legs"] = [leg.pk for leg in prepared.legs]
    ctx.data["cdrom"] = prepared.cdrom.pk if prepared.cdrom else None


def _legs_to_boot(ctx: JobContext, vm: VirtualMachine) -> list[AoEExport]:
    """The legs the preparation attached (one, when the other's disk server is down), else both."""
    wanted = ctx.data.get("legs")
    return [leg for leg in legs_of(vm) if wanted is None or leg.pk in wanted]


def detach_exports(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    for leg in legs_of(vm):
        aoe.detach(ssh_target(vm.cpu_server), leg.shelf, leg.slot)


def define_domain(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    cdrom = AoEExport.objects.filter(pk=ctx.data.get("cdrom")).first() if ctx.data.get("cdrom") else None
    bring_up.define(vm, vm.cpu_server, _legs_to_boot(ctx, vm), cdrom, ctx.log)
    ctx.data["defined"] = True


def undefine_domain(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    hypervisor.undefine(vm.cpu_server.libvirt_uri, vm.domain_name)


def start_domain(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    bring_up.start(vm, vm.cpu_server, ctx.log)


def destroy_domain(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    hypervisor.destroy(vm.cpu_server.libvirt_uri, vm.domain_name)


def confirm_running(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    bring_up.confirm_running(vm, vm.cpu_server)
    ctx.data["result"] = f"{vm.name} runs on {vm.cpu_server.name}"
    ctx.log(ctx.data["result"])


BOOT_POLL_S = 2.0


def wait_for_boot(ctx: JobContext) -> None:
    """Wait until the guest's agent shows its root array: the OS booted from its RAID1. The array
    exists from then on, so the VM's next boots are not told to create it. A guest that stays
    silent is not a failure (it runs; its mirror health will say more), only a warning. Between
    looks the job holds no worker (runner.Later): a slow boot costs the cluster nothing."""
    vm = job_vm(ctx)
    uri = vm.cpu_server.libvirt_uri
    started = ctx.data.setdefault("boot_wait_from", time.time())
    try:
        array = None
        mdstat = guest_agent.read_mdstat(uri, vm.domain_name, timeout=5)
        array = mdstat.array_on(GUEST_DISKS)
    except DriverError as exc:
        ctx.data["boot_wait_error"] = str(exc)[:200]
    if array is not None:
        record_view(vm.mirror.pk, view_from_mdstat(mdstat))  # notes that the array exists
        # From now on its definition boots the array as it is (the running guest is not touched).
        vm = job_vm(ctx)
        hypervisor.define(uri, hypervisor.domain_xml(guest_setup.domain_spec(vm, legs_of(vm))))
        ctx.log(f"{vm.name} booted in {time.time() - started:.0f} s: root array {array.name} "
                f"[{array.slot_map}] seen through the guest agent", array=array.name, slots=array.slot_map)
        return
    if time.time() - started < settings.VM_BOOT_WAIT_S:
        ctx.check_cancel()
        raise Later(BOOT_POLL_S)
    reason = ctx.data.get("boot_wait_error") or "no array yet"
    ctx.log(f"the guest agent did not show the root array within {settings.VM_BOOT_WAIT_S} s "
            f"({reason}); {vm.name} runs, its mirror health will tell more", LogLevel.WARNING)


@job_kind("vm.create", params=VmCreateParams, release=release_reservation, undo_after_loss=True)
def plan_create(ctx: JobContext) -> list[Step]:
    vm = job_vm(ctx)
    cpu = vm.cpu_server.name
    image = [Step(f"Write {vm.image.name} onto both legs (each disk server from its own copy)", write_image)] \
        if vm.image_id else []
    booted = [Step("Wait for the OS to boot from its RAID1", wait_for_boot)] if vm.image_id else []
    return [
        Step("Check and reserve name, memory and slot", log_reservation, release_reservation),
        Step("Create the backing volume on each disk server", create_volumes, remove_volumes),
        *image,
        Step("Export each volume with vblade", start_exports, stop_exports),
        Step(f"Verify both exports answer from {cpu}", verify_exports),
        Step(f"Prepare {cpu}: bridges, boot files, both exports", attach_exports, detach_exports),
        Step(f"Define the domain on {cpu}", define_domain, undefine_domain),
        Step("Start the domain", start_domain, destroy_domain),
        Step("Confirm it runs", confirm_running),
        *booted,
    ]


# --- vm.delete --------------------------------------------------------------------------------

def forget_vm(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    name = vm.name
    vm.delete()
    ctx.data["result"] = f"{name} deleted: domain, exports and volumes removed"
    ctx.log(f"{name} removed from the inventory")


def stop_all_exports(ctx: JobContext) -> None:
    ctx.data["exports"] = [leg.pk for leg in legs_of(job_vm(ctx))]
    stop_exports(ctx)


def remove_all_volumes(ctx: JobContext) -> None:
    ctx.data["volumes"] = [leg.pk for leg in legs_of(job_vm(ctx))]
    remove_volumes(ctx)


def remove_seeds(ctx: JobContext) -> None:
    """The VM's seed holds its login user's password hash and SSH keys: off every CPU server it may
    have run on (any that answers: create, start, migration and failover each put it where the VM
    runs). A server that does not answer keeps its copy, said in the log; the delete goes on."""
    path = guest_setup.seed_path(job_vm(ctx))
    servers = CpuServer.objects.exclude(state__in=(HostState.DEAD, HostState.FENCED)).order_by("name")

    def remove(cpu: CpuServer) -> str:
        try:
            images_driver.remove_file(ssh_target(cpu), path, timeout=30)
        except DriverError as exc:
            return f"{cpu.name} keeps {path}: {exc}"
        return ""

    with ThreadPoolExecutor(max_workers=8) as pool:
        for problem in filter(None, pool.map(remove, servers)):
            ctx.log(problem, LogLevel.WARNING)


def restore_state_before_delete(ctx: JobContext) -> None:
    """A delete cancelled before it began: the VM is back in the state it was in (not 'deleting')."""
    set_vm_state(ctx.job.vm_id, VmDeleteParams.of(ctx.job).state_before)


@job_kind("vm.delete", params=VmDeleteParams, release=restore_state_before_delete)
def plan_delete(ctx: JobContext) -> list[Step]:
    vm = job_vm(ctx)
    where = vm.cpu_server.name if vm.cpu_server else "its CPU server"
    # Deleting only goes forward: every step is idempotent, so a failed delete is finished by
    # running it again.
    return [
        Step(f"Force off the domain on {where}", destroy_domain),
        Step("Undefine the domain", undefine_domain),
        Step(f"Detach the exports on {where}", detach_exports),
        Step("Stop both exports", stop_all_exports),
        Step("Remove both backing volumes", remove_all_volumes),
        Step("Remove its seed from the CPU servers", remove_seeds),
        Step("Forget the VM", forget_vm),
    ]


# --- lifecycle: start, shut down, reboot, force off ---------------------------------------------

SHUTDOWN_POLL_SECONDS = 2.0  # between two looks at a guest shutting down; no worker is held meanwhile
SHUTDOWN_REPORT_EVERY = 5


def ask_shutdown(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    info = hypervisor.shutdown(vm.cpu_server.libvirt_uri, vm.domain_name)
    ctx.log(f"ACPI shutdown requested; {vm.domain_name} is {info.state}")


def wait_or_force_off(ctx: JobContext) -> None:
    """Wait for the guest to power itself off; force it off when the operator's timeout is up.

    The wait holds no worker (a tenant may ask for an hour): each look at the guest is one call of
    this step, and between looks the job waits outside any worker (runner.Later), its deadline in
    ctx.data, in wall-clock time."""
    vm = job_vm(ctx)
    uri = vm.cpu_server.libvirt_uri
    timeout = VmPowerParams.of(ctx.job).timeout_s
    deadline = ctx.data.setdefault("force_off_at", time.time() + timeout)
    info = hypervisor.domain_info(uri, vm.domain_name)
    if info is None or info.state != "running":
        ctx.log(f"{vm.name} shut down by itself ({info.state if info else 'gone'})")
    elif (left := deadline - time.time()) <= 0:
        hypervisor.destroy(uri, vm.domain_name)
        ctx.log(f"{vm.name} did not shut down within {timeout} s: forced off", LogLevel.WARNING)
    else:
        whole = int(left)
        reported = ctx.data.get("force_off_reported")
        if reported is None or reported - whole >= SHUTDOWN_REPORT_EVERY:
            ctx.data["force_off_reported"] = whole
            ctx.log(f"waiting for the guest to shut down: forced off in {whole} s", force_off_in_s=whole)
        ctx.check_cancel()
        raise Later(min(SHUTDOWN_POLL_SECONDS, left))
    set_vm_state(ctx.job.vm_id, VmState.STOPPED)
    ctx.data["result"] = f"{vm.name} is stopped"


def force_off(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    hypervisor.destroy(vm.cpu_server.libvirt_uri, vm.domain_name)
    set_vm_state(ctx.job.vm_id, VmState.STOPPED)
    ctx.data["result"] = f"{vm.name} forced off"
    ctx.log(ctx.data["result"])


def _start_steps(cpu: str) -> list[Step]:
    # Exports stay attached while a guest is stopped; attaching again is harmless and brings
    # them back if the CPU server restarted meanwhile. The definition is written again from the
    # inventory, so a start boots what the panel knows (its seed, its NICs) wherever it is.
    return [
        Step(f"Prepare {cpu}: bridges, boot files, both exports", attach_exports),
        Step(f"Define the domain on {cpu}", define_domain),
        Step("Start the domain", start_domain, destroy_domain),
        Step("Confirm it runs", confirm_running),
    ]


def _shutdown_steps(ctx: JobContext) -> list[Step]:
    timeout = VmPowerParams.of(ctx.job).timeout_s
    return [
        Step("Ask the guest to shut down (ACPI)", ask_shutdown),
        Step(f"Wait for it to stop (forced off after {timeout} s)", wait_or_force_off),
    ]


@job_kind("vm.start", params=VmPowerParams)
def plan_start(ctx: JobContext) -> list[Step]:
    return _start_steps(job_vm(ctx).cpu_server.name)


@job_kind("vm.shutdown", params=VmPowerParams)
def plan_shutdown(ctx: JobContext) -> list[Step]:
    return _shutdown_steps(ctx)


@job_kind("vm.reboot", params=VmPowerParams)
def plan_reboot(ctx: JobContext) -> list[Step]:
    return [*_shutdown_steps(ctx), *_start_steps(job_vm(ctx).cpu_server.name)]


@job_kind("vm.force_off", params=VmPowerParams)
def plan_force_off(ctx: JobContext) -> list[Step]:
    return [Step("Force the domain off (power cut)", force_off)]


# --- vm.eject: the end of an installation from an ISO ---------------------------------------------

def eject_live(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    if vm.state != VmState.RUNNING:
        ctx.log(f"{vm.name} is not running: nothing to eject live")
        return
    if hypervisor.eject_cdrom(vm.cpu_server.libvirt_uri, vm.domain_name):
        ctx.log(f"CD drive of {vm.name} emptied on {vm.cpu_server.name}; a reboot of the guest boots its disk")
    else:
        ctx.log(f"the CD drive of {vm.name} on {vm.cpu_server.name} was already empty")


def boot_from_disk(ctx: JobContext) -> None:
    """From now on the VM has no CD drive: its definition is written again without one (the running
    guest keeps its empty drive until it is next started)."""
    vm = job_vm(ctx)
    iso = vm.iso.name if vm.iso_id else VmEjectParams.of(ctx.job).iso
    VirtualMachine.objects.filter(pk=vm.pk).update(iso=None)
    vm = job_vm(ctx)
    if hypervisor.domain_info(vm.cpu_server.libvirt_uri, vm.domain_name) is not None:
        hypervisor.define(vm.cpu_server.libvirt_uri, hypervisor.domain_xml(guest_setup.domain_spec(vm, legs_of(vm))))
    ctx.data["result"] = f"{iso} ejected: {vm.name} boots from its disk"
    ctx.log(ctx.data["result"])


@job_kind("vm.eject", params=VmEjectParams)
def plan_eject(ctx: JobContext) -> list[Step]:
    return [
        Step("Empty the CD drive of the running guest", eject_live),
        Step("Boot from the disk from now on (definition without the CD)", boot_from_disk),
    ]
