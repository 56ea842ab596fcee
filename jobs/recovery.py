"""Jobs whose worker died: found by their heartbeat (or their worker's restart) and ended ERRORED.

Without this a job left RUNNING by a killed worker would hold its VM busy for ever (one active job
per VM). What it did on the hosts may be half-done: the message says so and points at
`cluster verify`, which shows the differences and the fixes.
"""
from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from jobs.choices import JobState, LogLevel
from jobs.models import Job
from jobs.runner import append_log

ADVICE = "what it did on the hosts may be half-done: run `cluster verify`"


def _end(jobs: list[Job], why: str) -> list[Job]:
    ended = []
    for job in jobs:
        message = f"{why}; {ADVICE}"
        now = timezone.now()
        # Compare-and-set: a job that logged (or finished) meanwhile is alive and left alone.
        if Job.objects.filter(pk=job.pk, state=JobState.RUNNING, heartbeat_at=job.heartbeat_at).update(
            state=JobState.ERRORED, message=message, finished_at=now
        ):
            job.refresh_from_db()
            append_log(job, f"Job errored: {message}", LogLevel.ERROR)
            ended.append(job)
    return ended


def expire_stale_jobs(stale_after: timedelta) -> list[Job]:
    cutoff = timezone.now() - stale_after
    stale = list(Job.objects.filter(state=JobState.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)))
    return [job for job in stale if _end(
        [job], f"its worker {job.worker or '(unknown)'} showed no sign of life since "
        f"{(job.heartbeat_at or job.started_at):%Y-%m-%d %H:%M:%S} UTC")]


def expire_jobs_of_worker(hostname: str) -> list[Job]:
    if not hostname:
        return []
    jobs = list(Job.objects.filter(state=JobState.RUNNING, worker=hostname))
    return _end(jobs, f"its worker {hostname} restarted while running it")
