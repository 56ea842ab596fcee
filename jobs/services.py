"""Creating jobs: the row is written in the caller's transaction, the task is queued on commit."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from jobs.choices import ACTIVE_STATES
from jobs.models import Job


class WorkerUnavailable(Exception):
    """No Celery worker answered: a job queued now would wait for one."""


def start_job(
    kind: str, *, vm: Any = None, target_name: str = "", params: dict | None = None,
    user: AbstractBaseUser | None = None, parent: Job | None = None,
) -> Job:
    """Write a job and queue it on commit. A VM with a job in progress refuses a second one
    (ValidationError naming the running job): the database's one_active_job_per_vm decides."""
    from jobs.tasks import run_job

    try:
        with transaction.atomic():
            job = Job.objects.create(
                kind=kind, vm=vm, target_name=target_name or (vm.name if vm else ""),
                params=params or {}, user=user if user is not None and user.is_authenticated else None,
                parent=parent, tenant_id=vm.tenant_id if vm is not None else (parent.tenant_id if parent else None),
            )
    except IntegrityError as exc:
        busy = active_job_for(vm)
        detail = f"job #{busy.pk} ({busy.kind}, {busy.state})" if busy else "another job"
        raise ValidationError(f"{vm.name} is busy with {detail}; try again when it has finished") from exc
    transaction.on_commit(lambda: run_job.delay(job.pk))
    return job


def active_job_for(vm: Any) -> Job | None:
    return Job.objects.filter(vm=vm, state__in=ACTIVE_STATES).first()


def request_cancel(job: Job) -> bool:
    """Ask a queued or running job to stop. False if it has already finished."""
    return bool(Job.objects.filter(pk=job.pk, state__in=ACTIVE_STATES).update(cancel_requested=True))


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
