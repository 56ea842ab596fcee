"""What each part of the panel tells, in its words: the one-line calls the incidents, the failover,
mirror health and the job runner make (`notify` does the rest)."""
from __future__ import annotations

from django.db import transaction

from ha.choices import IncidentKind
from ha.models import Incident
from jobs.choices import JobState
from jobs.models import Job
from notifications.choices import EventKind, Severity
from notifications.models import Event
from notifications.notify import notify
from storage.choices import MirrorHealth, MirrorState
from storage.models import Mirror
from vms.models import VirtualMachine

FAILED_JOB_STATES = (JobState.FAILED, JobState.ERRORED)
GUEST_NOT_WHOLE = (MirrorHealth.DEGRADED, MirrorHealth.RESYNCING)


def incident_opened(incident: Incident) -> None:
    # A dead CPU server's guests are down until restarted; a dead disk server's run on one leg.
    severity = Severity.CRITICAL if incident.kind == IncidentKind.CPU_SERVER_FAILED else Severity.ERROR
    notify(EventKind.INCIDENT_OPENED, severity, f"{incident.get_kind_display()}: {incident.host_name}",
           incident.summary, path=incident.get_absolute_url())


def host_unfenced(incident: Incident, message: str) -> None:
    notify(EventKind.HOST_UNFENCED, Severity.CRITICAL,
           f"{incident.host_name} could not be fenced: its guests wait for an operator's confirmation", message,
           path=incident.get_absolute_url())


def job_ended(job: Job) -> None:
    """Tells of a job that ended FAILED or ERRORED (nothing for the others)."""
    if job.state not in FAILED_JOB_STATES:
        return
    # Read again: a failed create's VM may be gone by now (its job keeps the name and the tenant).
    vm = VirtualMachine.objects.filter(pk=job.vm_id).first() if job.vm_id else None
    notify(EventKind.JOB_FAILED, Severity.ERROR, f"job #{job.pk} {job.kind} {job.target_name} {job.state}",
           job.message, vm=vm, tenant=job.tenant if job.tenant_id else None, path=job.get_absolute_url())


def _mirror_told_degraded(mirror: Mirror) -> bool:
    """Whether the last thing told of this mirror is that it degraded: each degradation is told once,
    whichever view (the legs on the wire, the guest's md) saw it first, and a resync is told only
    after one (not a new VM's first sync)."""
    Mirror.objects.select_for_update().filter(pk=mirror.pk).first()  # one teller at a time per mirror
    last = Event.objects.filter(vm_id=mirror.vm_id, kind__in=(EventKind.MIRROR_DEGRADED, EventKind.MIRROR_RESYNCED)
                                ).order_by("-created_at", "-id").values_list("kind", flat=True).first()
    return last == EventKind.MIRROR_DEGRADED


def mirror_degraded(mirror: Mirror, why: str, *, no_leg_left: bool = False) -> None:
    vm = mirror.vm
    with transaction.atomic():
        if _mirror_told_degraded(mirror):
            return
        subject = f"the disk of {vm.name} has {'no leg' if no_leg_left else 'one leg'} left"
        notify(EventKind.MIRROR_DEGRADED, Severity.ERROR if no_leg_left else Severity.WARNING, subject, why, vm=vm,
               path=vm.get_absolute_url())


def mirror_resynced(mirror: Mirror) -> None:
    vm = mirror.vm
    with transaction.atomic():
        if not _mirror_told_degraded(mirror):
            return
        notify(EventKind.MIRROR_RESYNCED, Severity.INFO, f"the disk of {vm.name} has both legs in sync again",
               "Its mirror is whole: both legs answer on the SAN and the guest's array is in sync.", vm=vm,
               path=vm.get_absolute_url())


def guest_mirror_changed(mirror: Mirror, health_before: str) -> None:
    """The guest's own md view changed (`mirror` holds the new one). Degraded: a leg failed, or a
    whole array began a resync (not a new array's first sync, seen from unknown). Resynced: whole
    again, told here when the legs on the wire are healthy (else the disk server's return tells it)."""
    if mirror.health in GUEST_NOT_WHOLE and (health_before == MirrorHealth.HEALTHY
                                             or mirror.health == MirrorHealth.DEGRADED):
        missing = ", ".join(f"leg {leg}" for leg in mirror.missing_legs) or "a leg"
        mirror_degraded(mirror, f"The guest's array is {mirror.health}: {missing} not in sync "
                                f"({mirror.health_detail}).")
    elif (mirror.health == MirrorHealth.HEALTHY and health_before in GUEST_NOT_WHOLE
          and mirror.state == MirrorState.HEALTHY):
        mirror_resynced(mirror)
