"""Run a job: its steps in order, each logged as it happens, undone in reverse on failure.

A job kind is a function that, given the job, returns its steps. Expected failures (a driver
error, a refused precondition) end the job FAILED with a message; anything else ends it ERRORED
with the traceback in the log. Either way the failed step and the steps done before it are undone
first, in reverse. A step can fail half-way (one volume made, the second refused), so its undo is
called too and must undo only what the step recorded as done (in `ctx.data`), and be idempotent.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from drivers.errors import DriverError
from jobs.choices import JobState, LogLevel
from jobs.events import publish
from jobs.models import Job, JobLogEntry

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """An expected failure: the message is what the operator reads."""


class JobCancelled(JobFailed):
    """The operator cancelled the job; raised by the runner between steps or by a step that waits."""


@dataclass
class JobContext:
    job: Job
    # Steps share what they learnt (paths, chosen hosts) through here; "result" becomes the
    # message of a job that succeeds.
    data: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str, level: str = LogLevel.INFO, **data: Any) -> JobLogEntry:
        return append_log(self.job, message, level, data)

    def cancel_requested(self) -> bool:
        return Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists()

    def check_cancel(self) -> None:
        if self.cancel_requested():
            raise JobCancelled("cancelled by an operator")


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[JobContext], None]
    undo: Callable[[JobContext], None] | None = None


JobPlan = Callable[[JobContext], list[Step]]
_KINDS: dict[str, JobPlan] = {}


def job_kind(name: str) -> Callable[[JobPlan], JobPlan]:
    def register(plan: JobPlan) -> JobPlan:
        _KINDS[name] = plan
        return plan

    return register


def append_log(job: Job, message: str, level: str = LogLevel.INFO, data: dict | None = None) -> JobLogEntry:
    last = job.log.order_by("-serial").values_list("serial", flat=True).first() or 0
    entry = JobLogEntry.objects.create(
        job=job, serial=last + 1, level=level, message=message,
        step=job.step, total_steps=job.total_steps, data=data or {},
    )
    Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(heartbeat_at=entry.time)
    publish(job, entry)
    return entry


def _set(job: Job, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=list(fields))


def claim(job_id: int, worker: str = "") -> Job | None:
    """Compare-and-set QUEUED -> RUNNING, so that a job redelivered by the broker never runs twice."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, state=JobState.QUEUED).update(
        state=JobState.RUNNING, started_at=now, heartbeat_at=now, worker=worker
    )
    return Job.objects.get(pk=job_id) if claimed else None


def run_job(job_id: int, worker: str = "") -> Job | None:
    job = claim(job_id, worker)
    if job is None:
        logger.info("job %s is not queued any more; not running it", job_id)
        return None
    ctx = JobContext(job)
    plan = _KINDS.get(job.kind)
    if plan is None:
        _finish(ctx, JobState.ERRORED, f"unknown job kind {job.kind!r}", [])
        return job
    try:
        steps = plan(ctx)
    except JobFailed as exc:
        _finish(ctx, JobState.FAILED, str(exc), [])
        return job
    _set(job, total_steps=len(steps))
    done: list[Step] = []
    for number, step in enumerate(steps, start=1):
        _set(job, step=number)
        if ctx.cancel_requested():
            _finish(ctx, JobState.CANCELLED, f"cancelled by an operator before {step.title}", done)
            return job
        ctx.log(f"Step {number}/{len(steps)}: {step.title}")
        try:
            step.run(ctx)
        except JobCancelled as exc:
            ctx.log(f"{step.title}: {exc}", LogLevel.WARNING)
            _finish(ctx, JobState.CANCELLED, f"{step.title}: {exc}", [*done, step])
            return job
        except (JobFailed, DriverError) as exc:
            ctx.log(f"{step.title} failed: {exc}", LogLevel.ERROR)
            _finish(ctx, JobState.FAILED, f"{step.title} failed: {exc}", [*done, step])
            return job
        except Exception as exc:
            ctx.log(f"{step.title} raised {type(exc).__name__}: {exc}", LogLevel.ERROR,
                    traceback=traceback.format_exc())
            _finish(ctx, JobState.ERRORED, f"{step.title}: unexpected {type(exc).__name__}: {exc}", [*done, step])
            return job
        done.append(step)
    _finish(ctx, JobState.SUCCEEDED, ctx.data.get("result", "done"), [])
    return job


def _finish(ctx: JobContext, state: str, message: str, done: list[Step]) -> None:
    job = ctx.job
    undo_failed = False
    for step in reversed(done):
        if step.undo is None:
            continue
        ctx.log(f"Undoing: {step.title}", LogLevel.WARNING)
        try:
            step.undo(ctx)
        except Exception as exc:  # keep undoing the rest; say loudly what is left behind
            undo_failed = True
            ctx.log(f"Undoing {step.title} failed, clean up by hand: {exc}", LogLevel.ERROR)
    if undo_failed:
        message += " (undo incomplete: see the log)"
    _set(job, state=state, message=message, finished_at=timezone.now())
    job.reservations.all().delete()  # memory the allocator held for it (vms/placement.py) is free again
    level = {JobState.SUCCEEDED: LogLevel.INFO, JobState.CANCELLED: LogLevel.WARNING}.get(state, LogLevel.ERROR)
    ctx.log(f"Job {state}: {message}", level)
