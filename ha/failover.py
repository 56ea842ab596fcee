"""Failover of a dead CPU server: fence it, restart its guests on the survivors, close the incident.

`start_failover(incident)` (called by the host monitor) and `confirm_fenced_manually(incident,
user)` (an operator, from the incident page) are the verbs; the job kind "host.failover" does the
work in three steps, "Fence <host>" -> "Restart <n> guests" -> "Close the incident", and writes
every decision twice: as an incident event (the timeline operators read) and as a job log entry
(the live progress on the job page). Nothing is restarted before a fence confirms (ha/fencing.py);
a restart is never undone (stopping a guest that came back would be the worse failure).
Docs: docs/fencing.md.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from django import db
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.choices import Action
from audit.services import record as audit_record
from drivers import aoe, hypervisor
from drivers.errors import DriverError
from ha import fencing
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import close, record, set_state
from ha.job_params import FailoverParams
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer
from hosts.targets import ssh_target
from jobs.choices import ACTIVE_STATES, LogLevel
from jobs.models import Job
from jobs.runner import JobContext, JobFailed, Later, Step, job_kind
from jobs.services import start_job
from notifications.n_plus_one import n_plus_one_seen
from notifications.triggers import host_unfenced
from vms.bring_up import ACTIVE, bring_up
from vms.choices import VmState
from vms.models import VirtualMachine
from vms.placement import AntiAffinityBreak, PlacementError, n_plus_one_shortfalls, release, reserve_move

JOB_KIND = "host.failover"
# Guests the panel last saw running (UNKNOWN: the monitor lost sight of them with their host).
RESTARTABLE_STATES = (VmState.RUNNING, VmState.UNKNOWN)
# Asking the dead host whether a guest still runs there: it usually does not answer, and every
# second spent waiting is a second the guests stay down. Survivors get longer.
DEAD_HOST_CHECK_TIMEOUT_S = 5
SURVIVOR_CHECK_TIMEOUT_S = 15
WAIT_FOR_EARLIER_JOB_S = 600  # a confirmation queued behind a running failover waits this long
EARLIER_JOB_POLL_S = 2.0  # between two looks at the earlier job; no worker is held meanwhile

logger = logging.getLogger(__name__)


# --- the verbs -----------------------------------------------------------------------------------

def failover_jobs(incident: Incident) -> QuerySet[Job]:
    return Job.objects.filter(kind=JOB_KIND, params__incident=incident.pk)


def _locked_incident(incident: Incident) -> Incident:
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    if locked.kind != IncidentKind.CPU_SERVER_FAILED or locked.cpu_server_id is None:
        raise ValidationError(f"{locked} is not about a CPU server the panel knows: nothing to fail over")
    if not locked.is_open:
        raise ValidationError(f"{locked} is closed")
    return locked


def _start(incident: Incident, user: AbstractBaseUser | None, why: str) -> Job:
    job = start_job(JOB_KIND, target_name=incident.host_name, user=user,
                    params=FailoverParams(incident=incident.pk, host=incident.host_name))
    record(incident, EventKind.NOTE, f"failover job #{job.pk} queued: {why}", job=job)
    return job


def start_failover(incident: Incident, user: AbstractBaseUser | None = None) -> Job:
    """Queue the failover of the incident's CPU server. Refused (ValidationError) while a failover
    job for the same incident is queued or running: two would race to start the same guests."""
    with transaction.atomic():
        locked = _locked_incident(incident)  # the row lock serialises two callers
        active = failover_jobs(locked).filter(state__in=ACTIVE_STATES).first()
        if active is not None:
            raise ValidationError(f"failover job #{active.pk} for {locked.host_name} is already {active.state}")
        return _start(locked, user, f"{locked.host_name} declared dead")


def start_failover_noted(incident: Incident) -> Job | None:
    """start_failover for the monitor: a refusal or an error is written on the incident (and logged)
    instead of raised, so that the monitor's cycle goes on; None then."""
    try:
        return start_failover(incident)
    except Exception as exc:
        logger.exception("start_failover failed for incident %s", incident.pk)
        record(incident, EventKind.NOTE, f"could not start the failover: {type(exc).__name__}: {exc}")
        return None


def confirm_fenced_manually(incident: Incident, user: AbstractBaseUser | None) -> Job:
    """Record an operator's "I confirm this host is off" as the fence, and queue a failover job that
    goes straight to the restart. Refused (ValidationError, nothing changed) unless the incident
    declared the host dead and no fence method confirmed (fencing.manual_confirmation_refused). A
    failover job still running sees the confirmation too; the new one waits for it to finish, then
    restarts whatever is left."""
    with transaction.atomic():
        locked = _locked_incident(incident)
        host = CpuServer.objects.select_for_update().get(pk=locked.cpu_server_id)
        refused = fencing.manual_confirmation_refused(locked, host)
        if refused:
            raise ValidationError(refused)
        if not fencing.mark_fenced(host):  # cannot happen under the row lock; kept as the contract
            raise ValidationError(f"{host.name} changed state meanwhile; look again and confirm again")
        who = user.get_username() if user is not None and user.is_authenticated else "an operator"
        locked.fenced_by = fencing.MANUAL
        locked.save(update_fields=["fenced_by"])
        audit_record(Action.FENCE_CONFIRMED, "host", host.name, user=user, details={"incident": locked.pk})
        record(locked, EventKind.FENCED, f"{host.name} fenced: {who} confirmed the host is off",
               user=user, method=fencing.MANUAL, operator=who)
        return _start(locked, user, f"{who} confirmed {host.name} is off")


# --- the job -------------------------------------------------------------------------------------

def _incident(ctx: JobContext) -> Incident:
    return Incident.objects.get(pk=FailoverParams.of(ctx.job).incident)


def _host(incident: Incident) -> CpuServer:
    if incident.cpu_server_id is None:
        raise JobFailed(f"{incident.host_name} is no longer in the inventory")
    return CpuServer.objects.get(pk=incident.cpu_server_id)


def guests_to_restart(host: CpuServer) -> list[VirtualMachine]:
    """The host's guests that ran and may restart by themselves, in restart order: highest
    priority first, then the largest (hardest to fit later), then by name."""
    return list(VirtualMachine.objects.select_related("cpu_server").filter(
        cpu_server=host, auto_restart=True, state__in=RESTARTABLE_STATES,
    ).order_by("-restart_priority", "-memory_mib", "name"))


def _event(ctx: JobContext, incident: Incident, kind: str, message: str, level: str = LogLevel.INFO,
           **data: Any) -> None:
    """One fact, twice: in the incident's timeline and in the job's live log."""
    record(incident, kind, message, job=ctx.job, **data)
    ctx.log(message, level, event=kind, **data)


def _wait_for_earlier_jobs(ctx: JobContext, incident: Incident) -> None:
    """Return once no earlier failover job of the incident is active. Until then the job waits
    outside any worker (runner.Later), so that the HA queue's slots stay free for failovers that
    can act; this is called again at each wake-up."""
    earlier = failover_jobs(incident).filter(state__in=ACTIVE_STATES, pk__lt=ctx.job.pk).first()
    if earlier is None:
        return
    deadline = ctx.data.setdefault("earlier_deadline", time.time() + WAIT_FOR_EARLIER_JOB_S)
    if time.time() > deadline:
        raise JobFailed(f"failover job #{earlier.pk} still runs after {WAIT_FOR_EARLIER_JOB_S} s")
    if ctx.data.get("waiting_for") != earlier.pk:
        ctx.data["waiting_for"] = earlier.pk
        ctx.log(f"waiting for failover job #{earlier.pk} to finish first")
    ctx.check_cancel()
    raise Later(EARLIER_JOB_POLL_S)


def fence_step(ctx: JobContext) -> None:
    incident = _incident(ctx)
    _wait_for_earlier_jobs(ctx, incident)
    incident.refresh_from_db()
    if not incident.is_open:  # an earlier job finished everything
        ctx.data["closed"] = True
        ctx.log(f"{incident} was closed meanwhile: nothing left to do")
        return
    host = _host(incident)
    vms = guests_to_restart(host)
    if incident.fenced_by and host.state == HostState.FENCED:
        ctx.data["covered"] = "all"
        ctx.data["fenced_by"] = incident.fenced_by
        ctx.log(f"{host.name} is already fenced ({incident.fenced_by}): going straight to the restart")
        return
    set_state(incident, IncidentState.FENCING)
    guests = fencing.guests_of(vms)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="failover-discover") as pool:
        discoveries = _discover_while_fencing(pool, host) if vms else {}
        _fence(ctx, incident, host, guests)
        ctx.data["discovered"] = [pk for pk, done in discoveries.items() if done.result()]


def _discover_while_fencing(pool: ThreadPoolExecutor, host: CpuServer) -> dict[int, Future[bool]]:
    """One SAN discovery on every CPU server that may take the guests, while the fence runs: it
    writes nothing to any disk (devices appear, nothing opens them), so it need not wait for the
    fence, and the restarts' attaches then find their devices (on the lab's initiator stand-in a
    discovery is about a second, the fence's power off about as long)."""
    def discover(target: CpuServer) -> bool:
        try:
            aoe.discover(ssh_target(target))
            return True
        except DriverError:
            return False  # each attach discovers again, and says what fails
        finally:
            db.connection.close()  # the pool's thread ends here: its connection with it

    survivors = CpuServer.objects.exclude(pk=host.pk).filter(state=HostState.UP)
    return {target.pk: pool.submit(discover, target) for target in survivors}


def _fence(ctx: JobContext, incident: Incident, host: CpuServer, guests: list[fencing.Guest]) -> None:
    outcomes: list[fencing.FenceOutcome] = []
    for method in host.fence_method_list:
        incident.refresh_from_db(fields=["fenced_by"])
        if incident.fenced_by == fencing.MANUAL:  # an operator confirmed while we were trying
            ctx.data.update(covered="all", fenced_by=fencing.MANUAL)
            ctx.log(f"{host.name} was confirmed off by an operator meanwhile")
            return
        if method == fencing.MANUAL:
            outcome = fencing.FenceOutcome(fencing.MANUAL, False, "waiting for an operator to confirm the host is off")
        else:
            ctx.log(f"fencing {host.name}: trying {method}", method=method)
            started = time.monotonic()
            outcome = fencing.METHODS[method](host, guests)
            outcome.data["seconds"] = round(time.monotonic() - started, 2)
        outcomes.append(outcome)
        _event(ctx, incident, EventKind.FENCE_ATTEMPT, f"{method}: {outcome.result}: {outcome.detail}",
               LogLevel.INFO if outcome.confirmed else LogLevel.WARNING, method=method, result=outcome.result,
               detail=outcome.detail, uncovered=outcome.uncovered, **outcome.data)
        if outcome.confirmed:
            _confirmed(ctx, incident, host, outcome)
            return
    _unfenced(ctx, incident, host, outcomes)


def _confirmed(ctx: JobContext, incident: Incident, host: CpuServer, outcome: fencing.FenceOutcome) -> None:
    if not fencing.mark_fenced(host):
        host.refresh_from_db()
        raise JobFailed(f"{host.name} became {host.state} while it was being fenced by {outcome.method}: "
                        "nothing restarted; look at the host and start the failover again")
    Incident.objects.filter(pk=incident.pk).update(fenced_by=outcome.method)
    _event(ctx, incident, EventKind.FENCED, f"{host.name} fenced by {outcome.method}: {outcome.detail}",
           method=outcome.method)
    ctx.data.update(covered="all", fenced_by=outcome.method)


def _unfenced(ctx: JobContext, incident: Incident, host: CpuServer, outcomes: list[fencing.FenceOutcome]) -> None:
    covered = frozenset().union(*(o.covered for o in outcomes))
    uncovered = {name: why for o in outcomes for name, why in o.uncovered.items()}
    why = "; ".join(f"{o.method}: {o.detail}" for o in outcomes) or "no fence method configured"
    if covered:
        message = (f"NO FENCE CONFIRMED for {host.name} as a whole ({why}); only guests whose disks are "
                   f"all fenced will be restarted; the others wait for an operator's confirmation")
    else:
        message = (f"NO FENCE CONFIRMED for {host.name}: nothing restarted ({why}). "
                   "Confirm by hand once you know the host is off")
    _event(ctx, incident, EventKind.FENCE_FAILED, message, LogLevel.ERROR,
           methods=[{"method": o.method, "result": o.result, "detail": o.detail} for o in outcomes])
    set_state(incident, IncidentState.UNFENCED, summary=message)
    host_unfenced(incident, message)
    if not covered:
        raise JobFailed(message)
    ctx.data.update(covered=sorted(covered), uncovered=uncovered, fenced_by="")


def _running_where(servers: list[CpuServer], dead: CpuServer, skip_dead: bool) -> dict[str, set[str] | str]:
    """{server: names of its running domains}, or {server: why it could not be asked}."""
    asked = [s for s in servers if not (skip_dead and s.pk == dead.pk)]

    def ask(server: CpuServer) -> set[str] | str:
        timeout = DEAD_HOST_CHECK_TIMEOUT_S if server.pk == dead.pk else SURVIVOR_CHECK_TIMEOUT_S
        try:
            return {d.name for d in hypervisor.list_domains(server.libvirt_uri, timeout=timeout) if d.state in ACTIVE}
        except DriverError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(len(asked), 1)) as pool:
        return dict(zip([s.name for s in asked], pool.map(ask, asked), strict=True))


# A start that fails for a passing reason is tried again on the same server: found by the fault
# suite, a target still tearing down the incoming copy of a migration the dead host was driving
# refuses the definition ("domain ... is already being removed") for a moment.
RESTART_RETRY_DELAYS_S = (2.0, 5.0)


def _restart_with_retries(vm: VirtualMachine, target: CpuServer, log: Callable[..., object]) -> None:
    """Up on `target` from its disks, as a start brings a guest up (vms/bring_up.py); on its one leg
    that answers when a disk server is down too."""
    for delay in (*RESTART_RETRY_DELAYS_S, None):
        try:
            bring_up(vm, target, lambda message: log(f"{vm.name}: {message}"), degraded_ok=True)
            return
        except DriverError as exc:
            if exc.permanent or delay is None:
                raise
            log(f"{vm.name}: starting it on {target.name} failed ({exc}): trying again in {delay:g} s",
                LogLevel.WARNING)
            time.sleep(delay)


def _discover_once(ctx: JobContext, planned: list[tuple[VirtualMachine, CpuServer]]) -> None:
    """One SAN discovery on each server taking several guests, before their attaches run at once:
    each attach then finds its device made, where otherwise each would start a discovery of its own
    (on the lab's initiator stand-in they queue one after another, 0.5 s each). A failed discovery
    costs nothing but that: each attach discovers again, and reports its own failure."""
    counts: dict[int, int] = {}
    for _vm, target in planned:
        counts[target.pk] = counts.get(target.pk, 0) + 1
    discovered = set(ctx.data.get("discovered", ()))  # while the fence ran
    for target in {target.pk: target for _vm, target in planned if counts[target.pk] > 1}.values():
        if target.pk in discovered:
            continue
        try:
            aoe.discover(ssh_target(target))
        except DriverError as exc:
            ctx.log(f"SAN discovery on {target.name} failed ({exc}): each guest's attach tries again",
                    LogLevel.WARNING)


def _restart_all(ctx: JobContext, planned: list[tuple[VirtualMachine, CpuServer]],
                 ) -> Iterator[tuple[VirtualMachine, CpuServer, float, BaseException | None]]:
    """Bring the planned guests up, FAILOVER_PARALLEL at once (each start is mostly waiting on the
    hosts: six one after another cost seconds of downtime the last one need not wait); yields each
    as it ends: the guest, its server, the seconds it took, what failed (or None)."""
    def restart(vm: VirtualMachine, target: CpuServer) -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            _restart_with_retries(vm, target, ctx.log)
            return time.monotonic() - started, None
        except (DriverError, JobFailed) as exc:
            return time.monotonic() - started, exc
        finally:
            db.connection.close()  # the pool's thread ends here: its connection with it

    if not planned:
        return
    _discover_once(ctx, planned)
    with ThreadPoolExecutor(max_workers=min(settings.FAILOVER_PARALLEL, len(planned)),
                            thread_name_prefix="failover-restart") as pool:
        running = {pool.submit(restart, vm, target): (vm, target) for vm, target in planned}
        for done in as_completed(running):
            vm, target = running[done]
            seconds, error = done.result()
            yield vm, target, seconds, error


def restart_guests(ctx: JobContext) -> None:
    if ctx.data.get("closed"):
        return
    incident = _incident(ctx)
    host = _host(incident)
    covered = ctx.data.get("covered", [])
    not_restarted: dict[str, str] = ctx.data.setdefault("not_restarted", {})
    set_state(incident, IncidentState.RESTARTING)
    vms = guests_to_restart(host)
    if not ctx.data.get("manual_noted"):
        ctx.data["manual_noted"] = True
        for vm in VirtualMachine.objects.filter(cpu_server=host, auto_restart=False, state__in=RESTARTABLE_STATES):
            _event(ctx, incident, EventKind.NOT_RESTARTED, f"{vm.name} not restarted: automatic restart is off",
                   vm=vm.name, reason="auto_restart off")
    if covered != "all":
        for vm in [vm for vm in vms if vm.pk not in covered]:
            reason = f"{host.name} is not fenced for it: {ctx.data.get('uncovered', {}).get(vm.name, 'no fence')}"
            not_restarted[vm.name] = reason
            _event(ctx, incident, EventKind.NOT_RESTARTED, f"{vm.name} not restarted: {reason}", LogLevel.WARNING,
                   vm=vm.name, reason=reason)
        vms = [vm for vm in vms if vm.pk in covered]
    if not vms:
        return
    servers = list(CpuServer.objects.order_by("name"))
    # A power fence that reads "off" is proof enough; otherwise the dead host is asked too (it may
    # only be cut off from the panel), with a short timeout.
    seen = _running_where(servers, host, skip_dead=ctx.data.get("fenced_by") == fencing.IPMI)
    for name, answer in seen.items():
        if isinstance(answer, str):
            ctx.log(f"could not ask {name} which guests run there: {answer}", LogLevel.WARNING)
    planned = []
    breaks: dict[str, tuple[AntiAffinityBreak, ...]] = {}
    for vm in vms:
        elsewhere = sorted(name for name, running in seen.items()
                           if not isinstance(running, str) and vm.domain_name in running)
        if elsewhere:
            reason = f"it already runs on {', '.join(elsewhere)}: not starting a second copy"
        else:
            try:  # the allocator's choice, held for this job until it ends (or the start fails)
                placement = reserve_move(ctx.job, vm, scope="surviving ")
                target, reason, breaks[vm.name] = placement.server, "", placement.breaks
            except PlacementError as exc:
                reason = str(exc)
        if reason:
            not_restarted[vm.name] = reason
            _event(ctx, incident, EventKind.NOT_RESTARTED, f"{vm.name} not restarted: {reason}", LogLevel.WARNING,
                   vm=vm.name, reason=reason)
            continue
        planned.append((vm, target))
    for vm, target, seconds, error in _restart_all(ctx, planned):
        if error is not None:
            release(ctx.job, vm)
            reason = f"could not start on {target.name}: {error}"
            not_restarted[vm.name] = reason
            _event(ctx, incident, EventKind.NOT_RESTARTED, f"{vm.name} not restarted: {reason}", LogLevel.ERROR,
                   vm=vm.name, reason=reason, cpu_server=target.name)
            continue
        not_restarted.pop(vm.name, None)
        _event(ctx, incident, EventKind.RESTARTED, f"{vm.name} restarted on {target.name} in {seconds:.1f} s",
               vm=vm.name, cpu_server=target.name, seconds=round(seconds, 2))
        for broken in breaks.get(vm.name, ()):
            # The allocator breaks a group only when no survivor without a member had room.
            _event(ctx, incident, EventKind.ANTI_AFFINITY, f"{broken} (no surviving CPU server without a member of "
                   "the group had room)", LogLevel.WARNING, vm=vm.name, group=broken.group, cpu_server=target.name,
                   together=[*broken.peers, vm.name])


def close_step(ctx: JobContext) -> None:
    if ctx.data.get("closed"):
        ctx.data["result"] = "the incident was already closed"
        return
    incident = _incident(ctx)
    host = _host(incident)
    if ctx.data.get("covered") != "all" and incident.fenced_by and host.state == HostState.FENCED:
        # An operator confirmed the fence while the partial restart ran: finish the job's work.
        ctx.log(f"{host.name} is now fenced ({incident.fenced_by}): restarting the guests left")
        ctx.data.update(covered="all", fenced_by=incident.fenced_by)
        restart_guests(ctx)
    _note_n_plus_one(ctx, incident)
    left = guests_to_restart(host)
    if not left:
        since = (timezone.now() - ctx.job.created_at).total_seconds()
        message = f"every guest of {host.name} to restart runs again, {since:.1f} s after the failover was asked for"
        close(incident, message)
        ctx.data["result"] = message
        ctx.log(message)
        return
    reasons = ctx.data.get("not_restarted", {})
    detail = "; ".join(f"{vm.name}: {reasons.get(vm.name, 'not restarted')}" for vm in left)
    message = f"{len(left)} guest(s) of {host.name} not restarted: {detail}"
    set_state(incident, IncidentState.OPEN if incident.fenced_by else IncidentState.UNFENCED, summary=message)
    raise JobFailed(message)


def _note_n_plus_one(ctx: JobContext, incident: Incident) -> None:
    """The survivors now carry the dead host's guests: say so if another failure would leave some
    without room (the cluster has lost its N+1 until the host returns or capacity is added)."""
    shortfalls = n_plus_one_shortfalls()
    n_plus_one_seen(shortfalls)
    if shortfalls:
        message = "N+1 lost: " + "; ".join(str(s) for s in shortfalls)
        record(incident, EventKind.NOTE, message, job=ctx.job)
        ctx.log(message, LogLevel.WARNING)


@job_kind(JOB_KIND, params=FailoverParams, ha=True)
def plan_failover(ctx: JobContext) -> list[Step]:
    incident = _incident(ctx)
    host = _host(incident)
    count = len(guests_to_restart(host))
    return [
        Step(f"Fence {host.name}", fence_step),
        Step(f"Restart {count} guest{'s' if count != 1 else ''}", restart_guests),
        Step("Close the incident", close_step),
    ]


__all__ = ["JOB_KIND", "confirm_fenced_manually", "guests_to_restart", "start_failover"]
