"""Live migration of a running VM to another CPU server: the verb (migrate_vm) and its job.

The guest's disks are AoE exports every CPU server can reach, so only memory and device state
move: libvirt copies the RAM while the guest runs (peer-to-peer, the source's libvirtd talking
to the target's), pauses it for the last dirty pages, and resumes it on the target. Until that
switch-over the guest runs on the source and any failure or a Cancel leaves it there.
Docs: docs/migration.md.
"""
from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from drivers import aoe, hypervisor, hypervisors, ssh
from drivers import migration as live_migration
from drivers.errors import DriverError
from hosts.choices import HostState
from hosts.models import CpuServer
from hosts.targets import ssh_target
from jobs.choices import LogLevel
from jobs.models import Job
from jobs.runner import JobCancelled, JobContext, JobFailed, Step, job_kind
from jobs.services import active_job_for, start_job
from tenants.access import is_operator
from tenants.quotas import lock as quota_lock
from vms import guest_setup
from vms.choices import VmState
from vms.guest_setup import legs_of
from vms.job_params import VmMigrateParams
from vms.models import VirtualMachine
from vms.placement import (
    Apart,
    Cluster,
    PlacementError,
    lock_servers,
    n_plus_one_shortfalls,
    release,
    reserve,
    server_load,
)
from vms.steps import job_vm, probe_legs

MAX_BANDWIDTH_MIB = 100_000  # ~800 Gbit/s: above it a cap is surely a typo
# How the source's libvirtd reaches the target for a peer-to-peer migration. It runs on the
# source host, as root, with that host's own SSH key and known_hosts: not the panel's URI, whose
# key and known_hosts paths exist only where the panel runs: the rule is the target's flavour's
# (drivers/hypervisors/). settings.MIGRATION_URI_TEMPLATE overrides it (same fields) for sites
# that reach their hosts differently.
# The migration gives up (and aborts) after this long plus ten times the time the memory takes
# at the cap (or at ASSUMED_MIB_PER_S without one): generous, because a busy guest needs passes.
TIMEOUT_BASE_S = 120
ASSUMED_MIB_PER_S = 50
PROGRESS_EVERY_S = 0.5  # at most two progress entries a second reach the log and the browser
MIB = 1 << 20


def migration_uri(target: CpuServer) -> str:
    template = settings.MIGRATION_URI_TEMPLATE or hypervisors.flavour(target.hypervisor).migration_uri_template
    port = "" if target.ssh_port == 22 else f":{target.ssh_port}"
    return template.format(user=target.ssh_user, address=target.address, port=port, name=target.name)


# --- the verb ----------------------------------------------------------------------------------

def migrate_vm(name: str, target: str | None = None, user: AbstractBaseUser | None = None,
               max_mib_per_s: int | None = None, parent: Job | None = None) -> Job:
    """Queue the live migration of running VM `name` to CPU server `target` (None: the allocator's
    choice among the other up CPU servers, apart from the members of its anti-affinity groups where
    one has room), with an optional bandwidth cap in MiB/s; `parent` is the job it is part of (a
    host's evacuation, whose reservation for this VM the migration takes over). The VM's memory is
    held on the target, and stays held on the source, until the job ends. A target that puts it
    next to a member of one of its groups is allowed, and the job's log warns (`anti_affinity_broken`).
    Raises ValidationError (nothing changed) for bad input, a busy VM (naming its job) or a target
    without room."""
    if user is not None and not is_operator(user):
        raise ValidationError({"__all__": "only operators migrate VMs"})
    if max_mib_per_s is not None and (
            not isinstance(max_mib_per_s, int) or not 1 <= max_mib_per_s <= MAX_BANDWIDTH_MIB):
        raise ValidationError({"max_mib_per_s": f"the bandwidth cap must be between 1 and {MAX_BANDWIDTH_MIB} "
                                                f"MiB/s, not {max_mib_per_s!r}"})
    with transaction.atomic():
        # of=self: the CPU server is joined for reading only (and may be NULL: an outer join).
        vm = (VirtualMachine.objects.select_for_update(of=("self",)).select_related("cpu_server")
              .filter(name=name).first())
        if vm is None:
            raise ValidationError({"name": f"no VM named {name!r}"})
        busy = active_job_for(vm)
        if busy is not None:
            raise ValidationError(f"{vm.name} is busy with job #{busy.pk} ({busy.kind}, {busy.state}); "
                                  "try again when it has finished")
        # The allocator's lock order, as create_vm's: the tenant's row (the job row refers to it),
        # then the server rows. A creation cannot take the target's memory meanwhile.
        if vm.tenant_id is not None:
            quota_lock(vm.tenant_id)
        lock_servers()
        if vm.state != VmState.RUNNING:
            raise ValidationError({"name": f"{vm.name} is {vm.get_state_display().lower()}: only a running "
                                           "VM can be live-migrated"})
        source = vm.cpu_server
        if source is None:
            raise ValidationError({"name": f"{vm.name} has no CPU server"})
        requested = None
        if target:  # "" (a form's "automatic") is None too
            requested = CpuServer.objects.filter(name=target).first()
            if requested is None:
                raise ValidationError({"target": f"no CPU server named {target!r}"})
        if parent is not None:
            release(parent, vm)  # the evacuation's hold for this VM becomes this migration's
        try:
            placement = Cluster.load().place(vm.memory_mib, name=vm.name, source=source, requested=requested,
                                             scope="other ", apart=Apart.of(vm))
        except PlacementError as exc:
            raise ValidationError({"target": str(exc)}) from exc
        chosen = placement.server
        job = start_job("vm.migrate", vm=vm, user=user, parent=parent, params=VmMigrateParams(
            source=source.name, target=chosen.name, requested_target=target or "automatic",
            max_mib_per_s=max_mib_per_s, anti_affinity_broken=[str(b) for b in placement.breaks],
        ))
        reserve(job, vm, [chosen, source])
        return job


# --- the job -----------------------------------------------------------------------------------

def _hosts(ctx: JobContext) -> tuple[CpuServer, CpuServer]:
    params = VmMigrateParams.of(ctx.job)
    return CpuServer.objects.get(name=params.source), CpuServer.objects.get(name=params.target)


# How long undo asks a host where the guest is: a dead source must not hold the undo for long.
WHERE_TIMEOUT_S = 15.0


def _where(uri: str, name: str) -> hypervisor.DomainInfo | None | str:
    """The domain on one host, or the error text if the host cannot say (undo must not raise)."""
    try:
        return hypervisor.domain_info(uri, name, timeout=WHERE_TIMEOUT_S)
    except DriverError as exc:
        return f"unknown ({exc})"


def precheck_target(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    for broken in VmMigrateParams.of(ctx.job).anti_affinity_broken:
        ctx.log(broken, LogLevel.WARNING)
    if target.state != HostState.UP:
        raise JobFailed(f"{target.name} is {target.get_state_display().lower()}, not up")
    # The room this job holds there, checked again: a domain started there by hand since counts.
    free = server_load(target, ignore_job=ctx.job).free_mib
    if free < vm.memory_mib:
        raise JobFailed(f"{target.name} has {free} MiB free, {vm.name} needs {vm.memory_mib} MiB")
    on_source = hypervisor.domain_info(source.libvirt_uri, vm.domain_name)
    if on_source is None or on_source.state != "running":
        raise JobFailed(f"{vm.domain_name} is {on_source.state if on_source else 'not defined'} on {source.name}, "
                        "not running: nothing to live-migrate")
    info = hypervisor.host_info(target.libvirt_uri)
    source_info = hypervisor.host_info(source.libvirt_uri)
    if info.hypervisor != source_info.hypervisor:
        raise JobFailed(f"{target.name} runs {info.hypervisor}, {source.name} runs {source_info.hypervisor}")
    if info.free_memory_bytes < vm.memory_mib * MIB:
        raise JobFailed(f"{target.name} reports {info.free_memory_bytes // MIB} MiB free memory, "
                        f"{vm.name} needs {vm.memory_mib} MiB")
    if hypervisor.domain_info(target.libvirt_uri, vm.domain_name) is not None:
        raise JobFailed(f"a domain named {vm.domain_name} already exists on {target.name}: "
                        "another copy of this guest? Remove it by hand after checking")
    ctx.log(f"{target.name}: libvirt answers ({info.hypervisor}, host {info.hostname}), "
            f"{free} MiB of {target.memory_mib} MiB unreserved, {vm.memory_mib} MiB needed",
            free_memory_mib=free, host_free_bytes=info.free_memory_bytes,
            hostname=info.hostname)  # the machine's own name: jobs/redaction.py hides it from tenants
    for what, path in (("kernel", vm.kernel_path), ("initramfs", vm.initrd_path)):
        if not path:
            continue
        found = ssh.run(ssh_target(target), ["test", "-r", path], timeout=15, check=False)
        if found.returncode != 0:
            raise JobFailed(f"the guest's {what} {path} is not readable on {target.name}")
        ctx.log(f"{what} {path} is on {target.name}")
    guest_setup.check_bridges(vm, target, ctx.log)
    probe_legs(ctx, vm, target)


def attach_on_target(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    attached: list[str] = ctx.data.setdefault("attached_on_target", [])
    # The seed and boot files first: the guest's definition names them, and libvirt opens them on
    # the target when the migration starts.
    guest_setup.put_boot_files(vm, target, ctx.log)
    for leg in legs_of(vm):
        # Recorded before the call: a leg attached just before a timeout is still detached on undo.
        attached.append(leg.name)
        ctx.save()
        guest_setup.attach_legs(vm, [leg], target, ctx.log)
    if vm.iso_id is not None:
        # The CD drive moves with the guest as it is on the source: the same ISO copy must be there.
        in_drive = [path for path in hypervisor.disk_sources(source.libvirt_uri, vm.domain_name)
                    if path in {e.device_path for e in guest_setup.iso_exports(vm)}]
        for path in in_drive:
            guest_setup.attach_iso(vm, target, ctx.log, wanted=path)


def detach_from_target(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    _source, target = _hosts(ctx)
    there = _where(target.libvirt_uri, vm.domain_name)
    if not isinstance(there, hypervisor.DomainInfo) and there is not None:
        ctx.log(f"not detaching the exports on {target.name}: cannot tell whether the guest runs there, "
                f"{there}", LogLevel.ERROR)
        return
    if there is not None and there.state != "shutoff":
        ctx.log(f"the guest is {there.state} on {target.name}: its exports stay attached there", LogLevel.WARNING)
        return
    for leg in legs_of(vm):
        if leg.name in ctx.data.get("attached_on_target", []):
            aoe.detach(ssh_target(target), leg.shelf, leg.slot)
            ctx.log(f"{leg.name} detached from {target.name}")


def live_migrate(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    cap = VmMigrateParams.of(ctx.job).max_mib_per_s
    uri = migration_uri(target)
    ctx.log(f"{source.name} -> {target.name} over {uri}, "
            + (f"capped at {cap} MiB/s" if cap else "no bandwidth cap"), migration_uri=uri)
    last_logged = 0.0
    completed: dict[str, Any] = {}

    def on_progress(progress: live_migration.MigrationProgress) -> None:
        nonlocal last_logged
        if progress.phase == "completed":
            completed.update(progress.as_dict())  # goes out below, with the downtime in words
            return
        now = time.monotonic()
        if now - last_logged < PROGRESS_EVERY_S:
            return
        last_logged = now
        ctx.log(describe(progress), migration={**progress.as_dict(), "max_mib_per_s": cap})

    try:
        result = live_migration.migrate(
            source.libvirt_uri, target.libvirt_uri, vm.domain_name, migration_uri=uri,
            hypervisor=source.hypervisor, max_bandwidth_mib=cap,
            on_progress=on_progress, should_cancel=ctx.cancel_requested,
            timeout=TIMEOUT_BASE_S + 10 * vm.memory_mib / (cap or ASSUMED_MIB_PER_S),
        )
    except live_migration.MigrationAborted as exc:
        raise JobCancelled(f"migration aborted on request; {vm.name} keeps running on {source.name}") from exc
    ctx.data["migrated"] = True
    final = {**completed, "elapsed_seconds": result.total_seconds, "migration_ms": result.migration_ms,
             "max_mib_per_s": cap}
    downtime = "not reported" if result.downtime_ms is None else f"{result.downtime_ms} ms"
    ctx.data["summary"] = f"migrated in {result.total_seconds:.1f} s, downtime {downtime}"
    ctx.log(f"migrated {_mib(result.memory_total)} in {result.total_seconds:.1f} s "
            f"({_mib(result.memory_processed)} sent in {result.iterations} passes, "
            f"{_mib(result.bytes_per_second)}/s): downtime {downtime}", migration=final)
    # Past the switch-over there is nothing to cancel: the guest runs on the target. A Cancel
    # that arrives now must not make the runner stop before the inventory says so.
    if Job.objects.filter(pk=ctx.job.pk, cancel_requested=True).update(cancel_requested=False):
        ctx.log("Cancel came after the switch-over: too late, finishing the migration", LogLevel.WARNING)


def after_failed_migration(ctx: JobContext) -> None:
    """Nothing to undo (libvirt keeps the guest on the source when a migration fails or is
    aborted), but say where the guest is; if it did reach the target, record that."""
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    try:  # run by recovery after the worker died: libvirt may be migrating it still
        if live_migration.abort_migration_in_flight(source.libvirt_uri, vm.domain_name, timeout=WHERE_TIMEOUT_S):
            ctx.log(f"the migration of {vm.name} still running on {source.name} was aborted", LogLevel.WARNING)
    except DriverError as exc:
        ctx.log(f"could not ask {source.name} whether the migration still runs: {exc}", LogLevel.WARNING)
    on_source = _where(source.libvirt_uri, vm.domain_name)
    on_target = _where(target.libvirt_uri, vm.domain_name)
    if isinstance(on_source, hypervisor.DomainInfo) and on_source.state == "running":
        ctx.log(f"{vm.name} keeps running on {source.name}", on_source=on_source.state)
    elif isinstance(on_target, hypervisor.DomainInfo) and on_target.state == "running":
        VirtualMachine.objects.filter(pk=vm.pk).update(cpu_server=target)
        ctx.log(f"{vm.name} runs on {target.name}: the migration had completed; the inventory says so",
                LogLevel.WARNING)
        try:
            detach_from_source(ctx)
        except DriverError as exc:
            ctx.log(f"its exports stay attached on {source.name}: {exc}", LogLevel.WARNING)
    else:
        ctx.log(f"{vm.name} runs on neither {source.name} ({_state(on_source)}) nor {target.name} "
                f"({_state(on_target)}): check by hand", LogLevel.ERROR)


def switch_inventory(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    VirtualMachine.objects.filter(pk=vm.pk).update(cpu_server=target)
    ctx.log(f"{vm.name} is recorded on {target.name} ({source.name} has {vm.memory_mib} MiB more free)")
    for shortfall in n_plus_one_shortfalls():
        ctx.log(f"N+1 after the move: {shortfall}", LogLevel.WARNING)


def detach_from_source(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, _target = _hosts(ctx)
    for leg in legs_of(vm):
        aoe.detach(ssh_target(source), leg.shelf, leg.slot)
        ctx.log(f"{leg.name} detached from {source.name}")


def confirm_migrated(ctx: JobContext) -> None:
    vm = job_vm(ctx)
    source, target = _hosts(ctx)
    there = hypervisor.domain_info(target.libvirt_uri, vm.domain_name)
    if there is None or there.state != "running" or not there.persistent:
        raise JobFailed(f"{vm.domain_name} on {target.name}: {_state(there)}, expected running and persistent")
    left = hypervisor.domain_info(source.libvirt_uri, vm.domain_name)
    if left is not None and left.state != "shutoff":
        raise JobFailed(f"{vm.domain_name} is {left.state} on {source.name} too: check by hand (split brain?)")
    if left is not None:
        # A definition left behind could be started by mistake next to the running guest.
        hypervisor.undefine(source.libvirt_uri, vm.domain_name)
        ctx.log(f"removed the leftover definition of {vm.domain_name} on {source.name}", LogLevel.WARNING)
    VirtualMachine.objects.filter(pk=vm.pk).update(state=VmState.RUNNING)
    ctx.data["result"] = f"{vm.name} runs on {target.name} ({ctx.data.get('summary', 'migrated')})"
    ctx.log(f"{vm.domain_name} runs on {target.name} (persistent) and is not defined on {source.name}")


@job_kind("vm.migrate", params=VmMigrateParams, undo_after_loss=True)
def plan_migrate(ctx: JobContext) -> list[Step]:
    vm = job_vm(ctx)
    params = VmMigrateParams.of(ctx.job)
    source, target = params.source, params.target
    if vm.cpu_server is None or vm.cpu_server.name != source:
        raise JobFailed(f"{vm.name} is recorded on {vm.cpu_server or 'no CPU server'} now, not {source}")
    return [
        Step(f"Check that {target} can take {vm.name}", precheck_target),
        Step(f"Prepare {target}: boot files, both exports", attach_on_target, detach_from_target),
        Step(f"Live-migrate from {source} to {target}", live_migrate, after_failed_migration),
        Step(f"Record {vm.name} on {target}", switch_inventory),
        Step(f"Detach the exports on {source}", detach_from_source),
        Step(f"Confirm it runs only on {target}", confirm_migrated),
    ]


# --- wording -----------------------------------------------------------------------------------

def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB" if value < 10 * MIB else f"{value / MIB:.0f} MiB"


def _state(info: Any) -> str:
    if isinstance(info, hypervisor.DomainInfo):
        return info.state + ("" if info.persistent else ", transient")
    return "not defined" if info is None else str(info)


def describe(progress: live_migration.MigrationProgress) -> str:
    """One log line for a progress sample, e.g. `migrating (pass 2): 76 % of 65 MiB, 32 MiB/s,
    guest dirtying 7.8 MiB/s, ~1 s left`."""
    if progress.phase == "starting":
        return "migrating: setting up"
    what = {"copying": "migrating", "iterating": f"migrating (pass {progress.iteration})",
            "switchover": "switching over", "finishing": "handing over to the target",
            "cancelling": "cancelling"}.get(progress.phase, progress.phase)
    parts = [f"{what}: {progress.percent:.0f} % of {_mib(progress.memory_total)}",
             f"{_mib(progress.bytes_per_second)}/s"]
    if progress.dirty_bytes_per_second:
        parts.append(f"guest dirtying {_mib(progress.dirty_bytes_per_second)}/s")
    if progress.throttle_percent:
        parts.append(f"vCPUs throttled {progress.throttle_percent} %")
    if progress.eta_seconds is not None:
        parts.append(f"~{progress.eta_seconds:.0f} s left")
    elif progress.phase in ("copying", "iterating"):
        parts.append("faster than it is copied: not converging yet" if progress.bytes_per_second
                     else "measuring the rate")
    return ", ".join(parts)
