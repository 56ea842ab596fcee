"""Creating jobs: the row is written in the caller's transaction, the task is queued on commit."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from jobs.choices import JobState
from jobs.models import Job


class WorkerUnavailable(Exception):
    """No Celery worker answered: a job queued now would wait for one."""


def start_job(
    kind: str, *, vm: Any = None, target_name: str = "", params: dict | None = None,
    user: AbstractBaseUser | None = None,
) -> Job:
    from jobs.tasks import run_job

    job = Job.objects.create(
        kind=kind, vm=vm, target_name=target_name or (vm.name if vm else ""),
        params=params or {}, user=user if user is not None and user.is_authenticated else None,
    )
    transaction.on_commit(lambda: run_job.delay(job.pk))
    return job


def active_job_for(vm: Any) -> Job | None:
    return Job.objects.filter(vm=vm, state__in=[JobState.QUEUED, JobState.RUNNING]).first()


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
