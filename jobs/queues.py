"""Which queue a job's messages go to, and sending them.

Two queues, each with workers of its own: high availability (failover, evacuation and its
migrations: a kind registered with `ha=True`, and the children of such a job) and everything else
(`CELERY_TASK_DEFAULT_QUEUE`: creates, deletes, a tenant's start and shutdown...). A failover never
waits behind tenant work; and since a long wait lets go of its worker (runner.Later), a slot is
only ever busy with a job that is acting. docs/jobs.md.
"""
from __future__ import annotations

from celery import current_app
from django.conf import settings
from django.db import transaction

from jobs.kinds import kind_of
from jobs.models import Job

# jobs.tasks.run_job, by name: the queues need not import the tasks (which import the runner).
RUN_JOB = "jobs.run_job"


def is_ha(job: Job) -> bool:
    kind = kind_of(job.kind)
    if kind is not None and kind.ha:
        return True
    parent = Job.objects.filter(pk=job.parent_id).values_list("kind", flat=True).first() if job.parent_id else None
    parent_kind = kind_of(parent) if parent else None
    return parent_kind is not None and parent_kind.ha


def queue_for(job: Job) -> str:
    return settings.CELERY_HA_QUEUE if is_ha(job) else settings.CELERY_TASK_DEFAULT_QUEUE


def send(job: Job, *, wake: str = "", countdown: float = 0) -> None:
    """Queue the message that runs `job` (or, with its `wake` token, resumes it after a wait),
    once the current transaction commits: a worker never looks for a row not yet written."""
    queue = queue_for(job)
    args = (job.pk, wake) if wake else (job.pk,)
    transaction.on_commit(lambda: current_app.send_task(RUN_JOB, args, queue=queue, countdown=countdown or None))
