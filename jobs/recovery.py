"""Jobs nobody is working on: run by Celery beat (`jobs.recover_jobs`), and by a worker that starts.

- A running job whose lease ran out (jobs/lease.py: its worker's heartbeat stopped) is ended
  ERRORED, its VM freed. What it did on the hosts may be half-done: the message says so and points
  at `cluster verify`. If its worker was only stalled, it finds its lease gone before its next
  host action and stops without acting (jobs/runner.py).
- A worker that starts under a node name that still holds running jobs died before: they end too.
- A job whose message no worker took (queued, or waiting outside a worker past its wake-up time)
  gets it again: the broker may have lost it (Redis restarted, the send failed after the commit).
  That is safe because a job runs once whatever arrives: a queued job is claimed by a
  compare-and-set, a waiting one only by the message carrying its current wake token.
- A job still unclaimed after JOB_UNCLAIMED_AFTER_S (no worker consumes its queue at all) is
  ended ERRORED, so that its VM is not busy for ever; a queued one gives back what it reserved.
Every change is a compare-and-set: a worker claiming the job at that moment wins.
"""
from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.choices import JobState, LogLevel
from jobs.kinds import kind_of
from jobs.lease import new_owner
from jobs.models import Job
from jobs.queues import queue_for, send
from jobs.runner import UNDO_KEY, JobContext, append_log, release_unstarted
from notifications.triggers import job_ended

ADVICE = "what it did on the hosts may be half-done: run `cluster verify`"
# Not held by any run, and waiting for a message: queued, or waiting outside a worker.
UNCLAIMED = Q(state=JobState.QUEUED) | Q(state=JobState.RUNNING, owner="", wake__gt="")


def _end(job: Job, still: Q, why: str) -> bool:
    if job.state == JobState.RUNNING and job.step and _undone_after_loss(job):
        return _hand_to_undo(job, still, why)
    message = f"{why}; {ADVICE}" if job.state == JobState.RUNNING else why
    with transaction.atomic():
        if not Job.objects.filter(still, pk=job.pk).update(
                state=JobState.ERRORED, message=message, finished_at=timezone.now(), owner="", lease_until=None,
                wake=""):
            return False
        was_queued = job.state == JobState.QUEUED
        job.refresh_from_db()
        if was_queued:
            release_unstarted(JobContext(job))
        append_log(job, f"Job errored: {message}", LogLevel.ERROR)
        job_ended(job)
    return True


def _undone_after_loss(job: Job) -> bool:
    kind = kind_of(job.kind)
    return kind is not None and kind.undo_after_loss


def _hand_to_undo(job: Job, still: Q, why: str) -> bool:
    """A dead run of a kind that undoes itself: a worker undoes its steps (jobs/runner.py) from what
    they recorded, and ends it ERRORED. Sent like a wake-up: whoever takes it, it runs once."""
    wake = new_owner()
    message = f"{why}; a worker undoes what it did"
    with transaction.atomic():
        if not Job.objects.filter(still, pk=job.pk).update(
                owner="", lease_until=None, wake=wake, due_at=timezone.now(), resent_at=None,
                context={**(job.context or {}), UNDO_KEY: why}):
            return False
        job.refresh_from_db()
        append_log(job, f"Its run died: {message}", LogLevel.ERROR)
        send(job, wake=wake)
    return True


def expire_stale_jobs() -> list[Job]:
    """Running jobs whose lease ran out."""
    now = timezone.now()
    stale = Job.objects.filter(state=JobState.RUNNING, lease_until__lt=now).exclude(owner="")
    return [job for job in stale if _end(
        job, Q(state=JobState.RUNNING, owner=job.owner, lease_until=job.lease_until),
        f"its worker {job.worker or '(unknown)'} showed no sign of life since "
        f"{(job.heartbeat_at or job.started_at or now):%Y-%m-%d %H:%M:%S} UTC (its lease ran out)")]


def expire_jobs_of_worker(hostname: str) -> list[Job]:
    if not hostname:
        return []
    held = Job.objects.filter(state=JobState.RUNNING, worker=hostname).exclude(owner="")
    return [job for job in held if _end(job, Q(state=JobState.RUNNING, owner=job.owner),
                                        f"its worker {hostname} restarted while running it")]


def resend_lost_messages(after: timedelta) -> list[Job]:
    """Send again the message of every job due for longer than `after` (and not re-sent since)."""
    cutoff = timezone.now() - after
    late = Job.objects.filter(UNCLAIMED).annotate(last_sent=Coalesce("resent_at", "due_at")).filter(
        last_sent__lt=cutoff)
    resent = []
    for job in late:
        with transaction.atomic():
            if not Job.objects.filter(UNCLAIMED, pk=job.pk, wake=job.wake, resent_at=job.resent_at).update(
                    resent_at=timezone.now()):
                continue
            waited = (timezone.now() - job.due_at).total_seconds()
            append_log(job, f"No worker took its message for {waited:.0f} s: sent again to {queue_for(job)} "
                       "(it runs once even if both arrive)", LogLevel.WARNING)
            send(job, wake=job.wake)
        resent.append(job)
    return resent


def end_unclaimed_jobs(after: timedelta) -> list[Job]:
    """End the jobs whose message nobody took for longer than `after`, re-sent or not."""
    cutoff = timezone.now() - after
    unclaimed = Job.objects.filter(UNCLAIMED, due_at__lt=cutoff)
    ended = []
    for job in unclaimed:
        waiting = "waited" if job.state == JobState.RUNNING else "was queued"
        why = (f"no worker took it: it {waiting} {after.total_seconds():.0f} s for a worker of the queue "
               f"{queue_for(job)}")
        if job.state == JobState.QUEUED:
            why += "; nothing was done on the hosts"
        if _end(job, Q(UNCLAIMED, pk=job.pk, wake=job.wake), why):
            ended.append(job)
    return ended
