"""Maintenance and evacuation of a CPU server: its running guests live-migrated to the others,
and its return to service.

Entering maintenance, or the monitor's policy for a host that turned suspect, starts one
"host.evacuate" job. It plans a target for every running guest (packed into the free memory of
the other CPU servers that are up), starts one vm.migrate child job per guest, a few at a time
(migrations compete for the link), waits for them and relays their progress into its own log.
Guests that cannot move are listed with the reason; the job fails when there is any.
Leaving maintenance starts one "host.return" job: the host's stale guest copies destroyed
(ha/readmit.py), every export's MAC list rebuilt so that it has its disks, then up.
Docs: docs/maintenance.md.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.choices import Action
from audit.services import record as audit_record
from drivers.errors import DriverError
from ha import readmit
from ha.fencing import restore_storage_access
from ha.job_params import EvacuateParams, ReturnParams
from hosts.choices import HostState
from hosts.models import CpuServer
from hosts.states import change_state
from jobs.choices import ACTIVE_STATES, JobState, LogLevel
from jobs.models import Job, JobLogEntry
from jobs.runner import JobCancelled, JobContext, JobFailed, Step, append_log, job_kind
from jobs.services import active_job_for, request_cancel, start_job
from vms.choices import VmState
from vms.job_params import VmMigrateParams
from vms.migration import MAX_BANDWIDTH_MIB, migrate_vm
from vms.models import VirtualMachine
from vms.placement import Apart, Cluster, PlacementError, lock_servers, reserve

EVACUATE = "host.evacuate"
RETURN = "host.return"
POLL_S = 0.5
RELAY_EVERY_S = 1.0  # a child's progress reaches the parent's log at most once a second per child
# A child nobody picks up means every worker slot is taken (the parent holds one itself): say so
# and move on rather than wait for ever with the guest's one-job-per-VM slot held.
QUEUED_TIMEOUT_S = 120.0
# Hosts that may be evacuated: a dead or fenced host runs nothing that could be live-migrated.
EVACUABLE = (HostState.UP, HostState.SUSPECT)


def evacuate_parallel() -> int:
    return settings.EVACUATE_PARALLEL


def _cap(max_mib_per_s: int | None) -> int | None:
    """Each migration's bandwidth cap (MiB/s): the caller's, else the site's setting, else none."""
    cap = max_mib_per_s if max_mib_per_s is not None else settings.EVACUATE_MAX_MIB_PER_S
    if cap is not None and (not isinstance(cap, int) or not 1 <= cap <= MAX_BANDWIDTH_MIB):
        raise ValidationError({"max_mib_per_s": f"the bandwidth cap must be between 1 and {MAX_BANDWIDTH_MIB} "
                                                f"MiB/s, not {cap!r}"})
    return cap


def active_evacuation(host: CpuServer) -> Job | None:
    return Job.objects.filter(kind=EVACUATE, params__host=host.name, state__in=ACTIVE_STATES).order_by("pk").first()


def active_return(host: CpuServer) -> Job | None:
    return Job.objects.filter(kind=RETURN, params__host=host.name, state__in=ACTIVE_STATES).order_by("pk").first()


def _who(user: AbstractBaseUser | None) -> str:
    return user.get_username() if user is not None and user.is_authenticated else "an operator"


def _cannot_evacuate(host: CpuServer) -> str:
    if host.state == HostState.MAINTENANCE:
        running = active_evacuation(host)
        return f"{host.name} is already in maintenance" + (
            f" (evacuation job #{running.pk} is {running.state})" if running else "")
    if host.state == HostState.DEAD:
        return (f"{host.name} is dead: nothing can be live-migrated from a dead host; "
                "failover restarts its guests after the fence")
    if host.state == HostState.FENCED:
        return f"{host.name} is fenced: its guests are off, there is nothing to live-migrate"
    return f"{host.name} is {host.get_state_display().lower()}: only an up or suspect host can be evacuated"


# --- the verbs ---------------------------------------------------------------------------------

def enter_maintenance(host: CpuServer, user: AbstractBaseUser | None = None, *,
                      max_mib_per_s: int | None = None) -> Job:
    """Up or suspect -> maintenance (placement stops using the host at once), then evacuate it,
    each migration capped at `max_mib_per_s` if given. Refused with a ValidationError saying why
    for any other state; a suspect host already being evacuated keeps its job (returned)."""
    cap = _cap(max_mib_per_s)
    with transaction.atomic():
        # The row lock orders us with leave_maintenance, evacuate_suspect and the monitor.
        locked = CpuServer.objects.select_for_update().get(pk=host.pk)
        if locked.state not in EVACUABLE:
            raise ValidationError(_cannot_evacuate(locked))
        change_state(locked, HostState.MAINTENANCE)  # cannot miss under the row lock
        audit_record(Action.MAINTENANCE_ENTERED, "host", host.name, user=user)
        running = active_evacuation(locked)
        if running is not None:
            append_log(running, f"{host.name} entered maintenance (by {_who(user)}); this evacuation carries on")
            job = running
        else:
            job = start_job(EVACUATE, target_name=host.name, user=user, params=EvacuateParams(
                host=host.name, reason=f"maintenance by {_who(user)}", trigger="maintenance", max_mib_per_s=cap))
    host.refresh_from_db(fields=["state", "state_changed_at"])
    return job


def _may_leave(host: CpuServer) -> CpuServer:
    """The host's row, locked, if it may leave maintenance now; else ValidationError saying why."""
    locked = CpuServer.objects.select_for_update().get(pk=host.pk)
    if locked.state != HostState.MAINTENANCE:
        raise ValidationError(f"{host.name} is {locked.get_state_display().lower()}, not in maintenance")
    running = active_evacuation(locked)
    if running is not None:
        raise ValidationError(f"{host.name}: guests are still being evacuated by job #{running.pk} "
                              f"({running.state}); cancel it or wait for it to finish")
    return locked


def leave_maintenance(host: CpuServer, user: AbstractBaseUser | None = None) -> Job:
    """Queue the return of `host` to service (a host.return job): maintenance -> up, once it has
    its disks. Refused with a ValidationError saying why unless it is in maintenance with no
    evacuation queued or running (a host taking new guests while its own are moved away would undo
    it); a return already queued or running is returned. The job first destroys every stale guest
    copy on the host, running or only defined (ha.readmit; it fails when the host cannot be asked),
    and lifts a storage fence only after that."""
    with transaction.atomic():
        locked = _may_leave(host)
        audit_record(Action.MAINTENANCE_LEFT, "host", host.name, user=user)
        running = active_return(locked)
        if running is not None:
            return running
        return start_job(RETURN, target_name=host.name, user=user, params=ReturnParams(host=host.name))


def evacuate_suspect(host: CpuServer, reason: str) -> Job | None:
    """The monitor's policy hook for a host it has marked suspect (the state stays suspect): start
    its evacuation, or return None when one is already queued or running for it. A host in any
    other state than suspect or maintenance is refused with a ValidationError."""
    with transaction.atomic():
        locked = CpuServer.objects.select_for_update().get(pk=host.pk)
        if locked.state not in (HostState.SUSPECT, HostState.MAINTENANCE):
            raise ValidationError(f"{host.name} is {locked.get_state_display().lower()}: evacuate_suspect "
                                  "is for suspect hosts (an up host would take new guests meanwhile)")
        if active_evacuation(locked) is not None:
            return None
        return start_job(EVACUATE, target_name=host.name, params=EvacuateParams(
            host=host.name, reason=reason, trigger="suspect", max_mib_per_s=_cap(None)))


# --- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Move:
    vm: str
    memory_mib: int
    target: str


@dataclass(frozen=True)
class Stay:
    vm: str
    reason: str
    stopped: bool = False  # a stopped guest stays by design: not a failure of the evacuation


@dataclass
class EvacuationPlan:
    host: str
    moves: list[Move] = field(default_factory=list)
    stays: list[Stay] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    anti_affinity: list[str] = field(default_factory=list)  # the groups a move breaks, with why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvacuationPlan:
        return cls(data["host"], [Move(**m) for m in data["moves"]], [Stay(**s) for s in data["stays"]],
                   list(data["warnings"]), list(data.get("anti_affinity", [])))  # plans from before it: none


def plan_evacuation(host: CpuServer) -> EvacuationPlan:
    """A target for every running guest of `host`, the allocator's choice among the other up CPU
    servers, counting the guests planned before it (memory, and the members of its anti-affinity
    groups); biggest guests first, so that the small ones fill what is left. The warnings are N+1
    among those servers once the plan is carried out, and the groups a move had to break."""
    plan = EvacuationPlan(host.name)
    cluster = Cluster.load(leaving=host)
    for vm in VirtualMachine.objects.filter(cpu_server=host).order_by("-memory_mib", "name"):
        busy = active_job_for(vm)
        if busy is not None:  # checked first: a guest being started could end up running here
            plan.stays.append(Stay(vm.name, f"busy with job #{busy.pk} ({busy.kind}, {busy.state})"))
        elif vm.state == VmState.STOPPED:
            plan.stays.append(Stay(vm.name, f"stopped: stays defined on {host.name}", stopped=True))
        elif vm.state != VmState.RUNNING:
            plan.stays.append(Stay(vm.name, f"{vm.get_state_display().lower()}: only a running guest can be "
                                            "live-migrated"))
        else:
            try:
                placement = cluster.place(vm.memory_mib, name=vm.name, source=host, scope="other ",
                                          apart=Apart.of(vm))
            except PlacementError as exc:
                plan.stays.append(Stay(vm.name, str(exc)))
                continue
            cluster.take(placement.server, vm.name, vm.memory_mib)
            plan.moves.append(Move(vm.name, vm.memory_mib, placement.server.name))
            plan.anti_affinity += [f"{b} (no other CPU server without a member of the group has room)"
                                   for b in placement.breaks]
    plan.warnings = [str(s) for s in cluster.shortfalls()]
    return plan


def reserve_plan(job: Job, host: CpuServer) -> EvacuationPlan:
    """Plan the evacuation of `host` and hold every planned target's room for `job` (each guest's
    migration takes its hold over when it starts), under the allocator's locks: the host's VM rows,
    then the server rows."""
    with transaction.atomic():
        vms = {vm.name: vm for vm in VirtualMachine.objects.select_for_update().filter(cpu_server=host).order_by("pk")}
        lock_servers()
        plan = plan_evacuation(host)
        targets = {s.name: s for s in CpuServer.objects.filter(name__in={m.target for m in plan.moves})}
        for move in plan.moves:
            reserve(job, vms[move.vm], [targets[move.target]])
    return plan


# --- the job -----------------------------------------------------------------------------------

def _host(ctx: JobContext) -> CpuServer:
    """The host an evacuation or a return is about."""
    params = EvacuateParams.of(ctx.job) if ctx.job.kind == EVACUATE else ReturnParams.of(ctx.job)
    return CpuServer.objects.get(name=params.host)


def plan_step(ctx: JobContext) -> None:
    host = _host(ctx)
    if host.state not in (HostState.MAINTENANCE, HostState.SUSPECT):
        raise JobFailed(f"{host.name} is {host.get_state_display().lower()} now: nothing moved")
    ctx.log(f"Evacuating {host.name}: {EvacuateParams.of(ctx.job).reason}")
    plan = reserve_plan(ctx.job, host)
    ctx.data["plan"] = plan.as_dict()
    for move in plan.moves:
        ctx.log(f"{move.vm} ({move.memory_mib} MiB) -> {move.target}", vm=move.vm, target=move.target)
    for stay in plan.stays:
        ctx.log(f"{stay.vm}: {stay.reason}", LogLevel.INFO if stay.stopped else LogLevel.WARNING, vm=stay.vm)
    for warning in plan.warnings:  # evacuating is better than not: warn and move anyway
        ctx.log(f"N+1 after the evacuation: {warning}", LogLevel.WARNING)
    for broken in plan.anti_affinity:
        ctx.log(broken, LogLevel.WARNING)
    cap = EvacuateParams.of(ctx.job).max_mib_per_s
    ctx.log(f"{len(plan.moves)} guest{'' if len(plan.moves) == 1 else 's'} to move, {evacuate_parallel()} at a time, "
            + (f"each capped at {cap} MiB/s" if cap else "no bandwidth cap"), plan=ctx.data["plan"])


@dataclass
class _Child:
    job: Job
    move: Move
    seen: int = 0  # last serial of the child's log read
    progress: JobLogEntry | None = None  # its newest progress entry not relayed yet
    relayed_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


def _start_child(ctx: JobContext, move: Move, not_moved: list[list[Any]]) -> _Child | None:
    cap = EvacuateParams.of(ctx.job).max_mib_per_s
    for target in (move.target, None):
        try:
            job = migrate_vm(move.vm, target, user=ctx.job.user, parent=ctx.job, max_mib_per_s=cap)
            break
        except ValidationError as exc:
            text = "; ".join(exc.messages)
            ctx.log(f"{move.vm}: {text}", LogLevel.WARNING, vm=move.vm)
            # The planned target lost its room meanwhile (a VM created there): let the migration
            # choose another, once. Other refusals (busy, stopped, gone) no target can help.
            if target is None or "target" not in getattr(exc, "error_dict", {}):
                not_moved.append([move.vm, text])
                return None
    chosen = VmMigrateParams.of(job).target
    ctx.log(f"{move.vm}: migration job #{job.pk} to {chosen} started", child=job.pk, vm=move.vm, target=chosen)
    return _Child(job, move)


def _relay(ctx: JobContext, child: _Child) -> None:
    """The child's step lines, warnings and (at most every RELAY_EVERY_S) its latest progress, in
    the parent's log with the child's id: the parent's page shows every migration as it goes."""
    prefix = f"job #{child.job.pk} ({child.move.vm})"
    for entry in child.job.log.filter(serial__gt=child.seen).order_by("serial"):
        child.seen = entry.serial
        if "migration" in entry.data:
            child.progress = entry  # only the newest counts; it goes out when due
        elif (entry.message.startswith("Step ") or entry.level != LogLevel.INFO) and not entry.message.startswith(
                "Job "):  # the outcome is logged once, by _finished
            ctx.log(f"{prefix}: {entry.message}", entry.level, child=child.job.pk, vm=child.move.vm)
    latest, now = child.progress, time.monotonic()
    if latest is not None and (now - child.relayed_at >= RELAY_EVERY_S or child.job.finished
                               or latest.data["migration"].get("phase") == "completed"):
        child.progress, child.relayed_at = None, now
        ctx.log(f"{prefix}: {latest.message}", child=child.job.pk, vm=child.move.vm,
                migration=latest.data["migration"])


def _expire_if_unclaimed(ctx: JobContext, child: _Child) -> None:
    if child.job.state != JobState.QUEUED or time.monotonic() - child.started_at < QUEUED_TIMEOUT_S:
        return
    why = (f"no worker took it within {QUEUED_TIMEOUT_S:g} s (an evacuation needs EVACUATE_PARALLEL + 1 "
           "worker slots on the HA queue: one for itself)")
    # Compare-and-set: a worker claiming it at this very moment wins, and the job runs.
    if Job.objects.filter(pk=child.job.pk, state=JobState.QUEUED).update(
            state=JobState.CANCELLED, message=why, finished_at=timezone.now()):
        child.job.refresh_from_db()
        append_log(child.job, f"Job cancelled: {why}", LogLevel.WARNING)


def _wait(seconds: float) -> None:
    """While the children run on other workers (the unit tests play the worker here)."""
    time.sleep(seconds)


def migrate_step(ctx: JobContext) -> None:
    plan = EvacuationPlan.from_dict(ctx.data["plan"])
    pending = list(plan.moves)
    running: list[_Child] = []
    moved: list[list[Any]] = ctx.data.setdefault("moved", [])  # [vm, target, child job id]
    not_moved: list[list[Any]] = ctx.data.setdefault("not_moved", [])  # [vm, reason]
    limit, cancelled = evacuate_parallel(), False
    while pending or running:
        if not cancelled and ctx.cancel_requested():
            cancelled = True
            ctx.log("Cancel: stopping the migrations under way, starting no more", LogLevel.WARNING)
            for child in running:
                request_cancel(child.job)
            not_moved.extend([m.vm, "not started: the evacuation was cancelled"] for m in pending)
            pending.clear()
        host = _host(ctx)
        if pending and host.state in (HostState.DEAD, HostState.FENCED):
            ctx.log(f"{host.name} is {host.state} now: starting no more migrations", LogLevel.ERROR)
            not_moved.extend([m.vm, f"not started: {host.name} turned {host.state}"] for m in pending)
            pending.clear()
        while pending and len(running) < limit:
            child = _start_child(ctx, pending.pop(0), not_moved)
            if child is not None:
                running.append(child)
        if not running:
            break
        _wait(POLL_S)
        for child in list(running):
            child.job.refresh_from_db()
            _relay(ctx, child)
            _expire_if_unclaimed(ctx, child)
            if child.job.finished:
                running.remove(child)
                _finished(ctx, child, moved, not_moved)
    if cancelled:
        raise JobCancelled(f"cancelled by an operator: {_outcome(ctx)}")


def _finished(ctx: JobContext, child: _Child, moved: list[list[Any]], not_moved: list[list[Any]]) -> None:
    job = child.job
    data = {"child": job.pk, "vm": child.move.vm, "child_state": job.state}
    if job.state == JobState.SUCCEEDED:
        moved.append([child.move.vm, VmMigrateParams.of(job).target, job.pk])
        ctx.log(f"job #{job.pk} ({child.move.vm}) succeeded: {job.message}", **data)
    else:
        not_moved.append([child.move.vm, f"migration job #{job.pk} {job.state}: {job.message}"])
        ctx.log(f"job #{job.pk} ({child.move.vm}) {job.state}: {job.message}", LogLevel.ERROR, **data)


def _outcome(ctx: JobContext) -> str:
    """'3 of 4 guests moved; 1 could not: big (no other CPU server has ...)', plus the stopped ones."""
    plan = EvacuationPlan.from_dict(ctx.data["plan"])
    moved, not_moved = ctx.data.get("moved", []), list(ctx.data.get("not_moved", []))
    not_moved += [[s.vm, s.reason] for s in plan.stays if not s.stopped]
    stopped = [s.vm for s in plan.stays if s.stopped]
    total = len(moved) + len(not_moved)
    parts = [f"{len(moved)} of {total} guests moved" if total else f"{plan.host} has no running guests"]
    if not_moved:
        parts.append(f"{len(not_moved)} could not: " + "; ".join(f"{vm} ({why})" for vm, why in not_moved))
    if stopped:
        parts.append(f"{len(stopped)} stopped, staying defined on {plan.host}: {', '.join(stopped)}")
    return "; ".join(parts)


def summary_step(ctx: JobContext) -> None:
    plan = EvacuationPlan.from_dict(ctx.data["plan"])
    known = {m.vm for m in plan.moves} | {s.vm for s in plan.stays}
    # A guest started on the host after the plan (by hand: placement no longer chooses it) is
    # still running there: the host is not empty, and the operator must hear it.
    for vm in VirtualMachine.objects.filter(cpu_server__name=plan.host, state=VmState.RUNNING).exclude(
            name__in=known).values_list("name", flat=True):
        ctx.data.setdefault("not_moved", []).append([vm, f"started on {plan.host} after the plan"])
    ctx.data["result"] = _outcome(ctx)
    for vm, target, child in ctx.data.get("moved", []):
        ctx.log(f"moved: {vm} -> {target} (job #{child})")
    if ctx.data.get("not_moved") or any(not s.stopped for s in plan.stays):
        raise JobFailed(ctx.data["result"])


@job_kind(EVACUATE, params=EvacuateParams, ha=True)
def plan_evacuate(ctx: JobContext) -> list[Step]:
    host = EvacuateParams.of(ctx.job).host
    return [
        Step(f"Plan: a target for every running guest of {host}", plan_step),
        Step(f"Migrate the guests off {host}", migrate_step),
        Step("Summary", summary_step),
    ]


# --- the return to service ---------------------------------------------------------------------

@contextmanager
def _refusal_fails() -> Iterator[None]:
    """A service's refusal (ValidationError), inside a step: the job fails with its message."""
    try:
        yield
    except ValidationError as exc:
        raise JobFailed("; ".join(exc.messages)) from exc


def may_leave_step(ctx: JobContext) -> None:
    with transaction.atomic(), _refusal_fails():
        host = _may_leave(_host(ctx))
    fence = (f"; left out of every export by a storage fence since {host.storage_fenced_at:%Y-%m-%d %H:%M:%S} UTC, "
             "lifted once its stale guest copies are gone" if host.storage_fenced_at else "")
    ctx.log(f"{host.name} is in maintenance, no evacuation under way{fence}")


def stale_copies_step(ctx: JobContext) -> None:
    host = _host(ctx)
    with _refusal_fails():
        destroyed = readmit.return_to_service(host, ctx.job.user)
    for line in destroyed:
        ctx.log(line, destroyed=True)
    if not destroyed:
        ctx.log(f"no stale guest copy on {host.name}")
    ctx.data["destroyed"] = len(destroyed)


def disks_step(ctx: JobContext) -> None:
    host = _host(ctx)
    try:  # this host back in every export's MAC list, or every export open again once no fence stands
        restore_storage_access(log=ctx.log)
    except DriverError as exc:
        raise JobFailed(f"{host.name} stays in maintenance: giving it its disks back failed: {exc}. "
                        "Return it to service again once the disk servers answer.") from exc


def up_step(ctx: JobContext) -> None:
    with transaction.atomic(), _refusal_fails():
        change_state(_may_leave(_host(ctx)), HostState.UP)
    destroyed = ctx.data.get("destroyed", 0)
    ctx.data["result"] = f"{ReturnParams.of(ctx.job).host} is up: it takes guests again" + (
        f" ({destroyed} stale guest cop{'y' if destroyed == 1 else 'ies'} destroyed first)" if destroyed else "")
    ctx.log(ctx.data["result"])


@job_kind(RETURN, params=ReturnParams, ha=True)
def plan_return(ctx: JobContext) -> list[Step]:
    host = ReturnParams.of(ctx.job).host
    return [
        Step(f"Check {host} may leave maintenance", may_leave_step),
        Step(f"Remove the stale guest copies on {host}", stale_copies_step),
        Step(f"Give {host} its disks back: every export's MAC list", disks_step),
        Step(f"Return {host} to service", up_step),
    ]
