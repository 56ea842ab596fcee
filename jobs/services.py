"""Creating jobs: the row is written in the caller's transaction, the task is queued on commit."""
from __future__ import annotations

from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import record_job_cancel, record_job_request
from jobs.choices import ACTIVE_STATES, JobState, LogLevel
from jobs.kinds import kind_of
from jobs.models import Job, hosts_column
from jobs.params import JobParams
from jobs.queues import send
from jobs.runner import JobContext, append_log, release_unstarted


class WorkerUnavailable(Exception):
    """No Celery worker answered: a job queued now would wait for one."""


class JobVm(Protocol):
    """The VM a job acts on (vms.models.VirtualMachine, which jobs/ does not import)."""

    name: str
    tenant_id: int | None

    def host_names(self) -> list[str]:
        """The hosts it uses now: a job on it acts on them even when its parameters name none."""


def start_job(
    kind: str, *, vm: JobVm | None = None, target_name: str = "", params: JobParams | None = None,
    user: AbstractBaseUser | None = None, parent: Job | None = None,
) -> Job:
    """Write a job and queue it on commit (jobs/queues.py: the HA queue or the default one).
    `params` must be the parameters the kind declares (none: a kind that takes none); bad ones raise
    a ValidationError and write nothing. The job's hosts, for the history, are those its parameters
    name and those its VM uses now. A VM with a job in progress refuses a second one
    (ValidationError naming the running job): the database's one_active_job_per_vm decides."""
    declared = kind_of(kind)
    if declared is None:
        raise ValidationError(f"no job kind {kind!r}")
    params = params if params is not None else declared.params.from_json({})
    if type(params) is not declared.params:
        raise TypeError(f"{kind} takes {declared.params.__name__}, not {type(params).__name__}")
    hosts = [*params.hosts(), *(vm.host_names() if vm is not None else [])]
    try:
        with transaction.atomic():
            job = Job.objects.create(
                kind=kind, vm=vm, target_name=target_name or (vm.name if vm else ""),
                params=params.to_json(), hosts=hosts_column(hosts),
                user=user if user is not None and user.is_authenticated else None,
                parent=parent, tenant_id=vm.tenant_id if vm is not None else (parent.tenant_id if parent else None),
            )
            record_job_request(job)
    except IntegrityError as exc:
        busy = active_job_for(vm)
        detail = f"job #{busy.pk} ({busy.kind}, {busy.state})" if busy else "another job"
        raise ValidationError(f"{vm.name} is busy with {detail}; try again when it has finished") from exc
    send(job)
    return job


def active_job_for(vm: Any) -> Job | None:
    return Job.objects.filter(vm=vm, state__in=ACTIVE_STATES).first()


def request_cancel(job: Job) -> bool:
    """Stop a job. A queued one ends at once, CANCELLED, and gives back what it reserved (nothing
    was done on a host; its message, when it arrives, finds it no longer queued). A running one is
    asked to stop: the runner (between steps) and steps that wait look at the flag and undo what
    was done. False if it has already finished."""
    with transaction.atomic():
        # Compare-and-set: a worker claiming it at this very moment wins, and is asked to stop.
        if Job.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
                state=JobState.CANCELLED, cancel_requested=True, finished_at=timezone.now(),
                message="cancelled by an operator before it started"):
            job.refresh_from_db()
            release_unstarted(JobContext(job))
            append_log(job, f"Job cancelled: {job.message}", LogLevel.WARNING)
            record_job_cancel(job)
            return True
        asked = bool(Job.objects.filter(pk=job.pk, state__in=ACTIVE_STATES).update(cancel_requested=True))
        if asked:
            record_job_cancel(job)
    return asked


def check_workers(timeout: float = 2.0) -> int:
    """How many Celery workers answer a ping; raises WorkerUnavailable when none does."""
    from xenaoe_panel.celery import app

    replies = app.control.ping(timeout=timeout) or []
    if not replies:
        raise WorkerUnavailable(
            f"no Celery worker answered within {timeout:g} s; start one with "
            "`celery -A xenaoe_panel worker`"
        )
    return len(replies)
