"""What a monitor that takes the lead finishes for the one before it (ha/leadership.py).

A decision is several writes: a host row turns dead (compare-and-set), then its incident opens, then
the failover job is queued (or, for a disk server, its mirrors are marked degraded). A leader that
dies between two of them leaves a decision half taken, and the next leader would not take it again:
a host already dead is never declared dead twice. So the new leader looks once, when it takes over,
and finishes each through the same guarded verbs, which refuse a second incident (one open per
host) and a second failover job (one active per incident):

- a host dead with no incident opened since it turned dead: its incident (and the failover);
- a disk server's incident still "open": its mirrors were not marked degraded yet;
- a CPU server's open incident without any failover job, the host still dead: the failover;
- a failover job no worker has taken yet: its message is sent again. The last leader may have died
  between committing the job and handing its message to the broker (an on-commit send), and the
  periodic re-send of lost messages (jobs/recovery.py) comes minutes later: too late for guests
  that are down. A job is claimed once, so a second message is harmless.

Not here: a failover job whose worker died (jobs/recovery.py ends it, the incident says so), and a
policy's evacuation (the new leader counts SAN misses and reads BMCs afresh; evacuate_suspect
refuses a second evacuation).
"""
from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from ha import failover
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import record
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from jobs.models import Job
from jobs.queues import send
from jobs.recovery import UNCLAIMED
from jobs.runner import append_log


def _has_incident_since(host: CpuServer | DiskServer, kind: str) -> bool:
    incidents = Incident.objects.filter(host_name=host.name, kind=kind)
    if host.state_changed_at is not None:
        incidents = incidents.filter(Q(opened_at__gte=host.state_changed_at) | ~Q(state=IncidentState.CLOSED))
    return incidents.exists()


def dead_without_incident() -> list[CpuServer | DiskServer]:
    """Hosts declared dead whose incident was never opened, and disk servers whose incident is
    open but whose mirrors were not marked yet (disk_server_failed is idempotent)."""
    hosts: list[CpuServer | DiskServer] = [
        cpu for cpu in CpuServer.objects.filter(state=HostState.DEAD)
        if not _has_incident_since(cpu, IncidentKind.CPU_SERVER_FAILED)]
    for disk in DiskServer.objects.filter(state=HostState.DEAD):
        unfinished = Incident.objects.filter(disk_server=disk, kind=IncidentKind.DISK_SERVER_FAILED,
                                             state=IncidentState.OPEN).exists()
        if unfinished or not _has_incident_since(disk, IncidentKind.DISK_SERVER_FAILED):
            hosts.append(disk)
    return hosts


def incidents_without_failover() -> list[Incident]:
    """Open CPU-server incidents with no failover job at all, their host still dead."""
    with_jobs = Job.objects.filter(kind=failover.JOB_KIND).values_list("params__incident", flat=True)
    return list(Incident.objects.filter(kind=IncidentKind.CPU_SERVER_FAILED, cpu_server__state=HostState.DEAD)
                .exclude(state=IncidentState.CLOSED).exclude(pk__in=[pk for pk in with_jobs if pk is not None]))


def resume_failover(incident: Incident, changes: list[str]) -> None:
    """Queue the failover the last leader did not; start_failover refuses a second one."""
    record(incident, EventKind.NOTE, "the monitor that led stopped before starting the failover; "
                                     "the monitor now leading starts it")
    job = failover.start_failover_noted(incident)
    if job is not None:
        changes.append(f"{incident.host_name}: incident #{incident.pk} resumed, failover job #{job.pk}")


def resend_unclaimed_failovers(changes: list[str]) -> list[Job]:
    """Send again the message of every failover job still waiting for a worker."""
    waiting = list(Job.objects.filter(UNCLAIMED, kind=failover.JOB_KIND))
    for job in waiting:
        with transaction.atomic():
            append_log(job, "the monitor that led may have stopped before its message left: the monitor now "
                       "leading sends it again (the job still runs once)")
            send(job, wake=job.wake)
        changes.append(f"failover job #{job.pk}: message sent again")
    return waiting
