"""Run a job: its steps in order, each logged as it happens, undone in reverse on failure.

A job kind is a function that, given the job, returns its steps. Expected failures (a driver
error, a refused precondition) end the job FAILED with a message; anything else ends it ERRORED
with the traceback in the log. Either way the failed step and the steps done before it are undone
first, in reverse. A step can fail half-way (one volume made, the second refused), so its undo is
called too and must undo only what the step recorded as done (in `ctx.data`), and be idempotent.
A step records what it is about to do on a host *before* the call: a call that times out may have
acted all the same.

The run holds the job by a lease (jobs/lease.py); once it is lost the run stops where it is,
without acting, undoing or writing the job's state (recovery wrote it). A step that waits for
something outside (a guest shutting down, an earlier failover) raises `Later`: the job lets go of
its worker and the step is called again, on any worker, when its wake-up message arrives.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from drivers import guard
from drivers.errors import DriverError
from jobs.choices import JobState, LogLevel
from jobs.dbretry import retrying
from jobs.events import publish
from jobs.kinds import JobKind, JobPlan, job_kind, kind_of  # noqa: F401 - the kinds' registry, used here
from jobs.lease import Lease, LeaseLost, new_owner
from jobs.models import Job, JobLogEntry
from notifications.triggers import job_ended

logger = logging.getLogger(__name__)
# In a job's context: recovery handed the job of a dead run to a worker to undo (the message why).
UNDO_KEY = "_undo_after_loss"
UNDO_RETRY_DELAYS_S = (2.0, 5.0, 10.0)


class JobFailed(Exception):
    """An expected failure: the message is what the operator reads."""


class JobCancelled(JobFailed):
    """The operator cancelled the job; raised by the runner between steps or by a step that waits."""


class Later(Exception):
    """Raised by a step that waits for something outside the panel: the job lets go of its worker
    and the same step is called again after `seconds`. The step must pick up where it was from
    `ctx.data` (kept with the job meanwhile, so JSON only) and count its deadline in wall-clock
    time (`time.time()`): the next call may run on another worker."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"again in {seconds:g} s")
        self.seconds = max(float(seconds), 0.0)


@dataclass
class JobContext:
    job: Job
    # Steps share what they learnt (paths, chosen hosts) through here; "result" becomes the
    # message of a job that succeeds.
    data: dict[str, Any] = field(default_factory=dict)
    # The run's hold on the job; None outside a run (a job ended before any worker took it).
    lease: Lease | None = None
    # Titles of the undos that failed: what is left on the hosts. An undo that would forget the
    # rows describing them (release_reservation) keeps them instead.
    undo_failures: list[str] = field(default_factory=list)
    # A step may work on several guests at once (the failover's restarts): its threads log through
    # here, and a job's entries are numbered one after another.
    _log_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def ensure_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def save(self) -> None:
        """Keep `data` with the job now: a step calls it after recording what it is about to do on a
        host, so that if its worker dies the undo run elsewhere knows (jobs/recovery.py). Only for
        kinds undone after a loss; their data must be JSON."""
        kind = kind_of(self.job.kind)
        if self.lease is not None and kind is not None and kind.undo_after_loss:
            _set(self, context=self.data)

    def log(self, message: str, level: str = LogLevel.INFO, **data: Any) -> JobLogEntry:
        self.ensure_lease()
        with self._log_lock:
            return append_log(self.job, message, level, data)

    def cancel_requested(self) -> bool:
        row = retrying(Job.objects.filter(pk=self.job.pk).values("cancel_requested", "owner", "state").first)
        if self.lease is not None and (row is None or row["owner"] != self.lease.owner
                                       or row["state"] != JobState.RUNNING):
            self.lease.lost()
        return bool(row and row["cancel_requested"])

    def check_cancel(self) -> None:
        if self.cancel_requested():
            raise JobCancelled("cancelled by an operator")


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[JobContext], None]
    undo: Callable[[JobContext], None] | None = None


def append_log(job: Job, message: str, level: str = LogLevel.INFO, data: dict | None = None) -> JobLogEntry:
    def write() -> JobLogEntry:
        last = job.log.order_by("-serial").values_list("serial", flat=True).first() or 0
        return JobLogEntry.objects.create(
            job=job, serial=last + 1, level=level, message=message,
            step=job.step, total_steps=job.total_steps, data=data or {},
        )

    entry = retrying(write)
    publish(job, entry)
    return entry


def release_unstarted(ctx: JobContext) -> None:
    """Give back what a job that never began a step reserved (its kind's `release`)."""
    kind = kind_of(ctx.job.kind)
    if kind is not None and kind.release is not None:
        kind.release(ctx)


def _set(ctx: JobContext, **fields: Any) -> None:
    """Write the job's row only if this run still holds it (compare-and-set on the owner)."""
    job = ctx.job
    assert ctx.lease is not None
    if not retrying(lambda: ctx.lease.mine().update(**fields)):
        ctx.lease.lost()
    for name, value in fields.items():
        setattr(job, name, value)


def claim(job_id: int, worker: str = "", wake: str = "") -> Job | None:
    """Compare-and-set, so that a job redelivered by the broker never runs twice: QUEUED -> RUNNING
    for a new job; for a job waiting outside a worker, only the message carrying its `wake` token."""
    now = timezone.now()
    held = {"owner": new_owner(), "lease_until": now + timedelta(seconds=settings.JOB_LEASE_S),
            "heartbeat_at": now, "worker": worker, "resent_at": None}
    if wake:
        claimed = Job.objects.filter(pk=job_id, state=JobState.RUNNING, owner="", wake=wake).update(wake="", **held)
    else:
        claimed = Job.objects.filter(pk=job_id, state=JobState.QUEUED).update(
            state=JobState.RUNNING, started_at=now, **held)
    return Job.objects.get(pk=job_id) if claimed else None


def run_job(job_id: int, worker: str = "", wake: str = "") -> Job | None:
    job = claim(job_id, worker, wake)
    if job is None:
        logger.info("job %s is not waiting for this message any more; not running it", job_id)
        return None
    lease = Lease(job.pk, job.owner, settings.JOB_LEASE_S)
    ctx = JobContext(job, dict(job.context or {}), lease)
    lease.start()
    try:
        with guard.checking(lease.check):
            _run(ctx)
    except LeaseLost as exc:
        _note_lost(ctx, exc)
    finally:
        lease.stop()
    return job


def _run(ctx: JobContext) -> None:
    job = ctx.job
    kind = kind_of(job.kind)
    if kind is None:
        _finish(ctx, JobState.ERRORED, f"unknown job kind {job.kind!r}", [])
        return
    try:
        steps = kind.plan(ctx)
    except JobFailed as exc:
        _finish(ctx, JobState.FAILED, str(exc), [], unstarted=not job.step)
        return
    if UNDO_KEY in ctx.data:  # its earlier run died: undo what it did, from what its steps recorded
        why = ctx.data.pop(UNDO_KEY)
        ctx.log(f"Undoing what the run that died did, from step {job.step}/{len(steps)} back", LogLevel.WARNING)
        _finish(ctx, JobState.ERRORED, why, steps[:job.step])
        return
    resuming = job.step  # woken after a Later: that step is called again
    if resuming and len(steps) != job.total_steps:
        _finish(ctx, JobState.ERRORED, f"its plan has {len(steps)} steps now, {job.total_steps} when it began; "
                "what it did may be half-done: run `cluster verify`", [])
        return
    _set(ctx, total_steps=len(steps))
    done: list[Step] = steps[:max(resuming - 1, 0)]
    for number, step in enumerate(steps[len(done):], start=len(done) + 1):
        # Kept with the job for an undo after the run's loss (JSON: only such kinds' data is).
        _set(ctx, step=number, **({"context": ctx.data} if kind.undo_after_loss else {}))
        if ctx.cancel_requested():
            # A step woken from a wait had begun: its own undo runs too.
            begun = [*done, step] if number == resuming else done
            _finish(ctx, JobState.CANCELLED, f"cancelled by an operator before {step.title}", begun,
                    unstarted=number == 1 and not resuming)
            return
        if number != resuming:
            ctx.log(f"Step {number}/{len(steps)}: {step.title}")
        try:
            step.run(ctx)
        except Later as later:
            _wait_outside(ctx, later.seconds)
            return
        except JobCancelled as exc:
            ctx.log(f"{step.title}: {exc}", LogLevel.WARNING)
            _finish(ctx, JobState.CANCELLED, f"{step.title}: {exc}", [*done, step])
            return
        except (JobFailed, DriverError) as exc:
            ctx.log(f"{step.title} failed: {exc}", LogLevel.ERROR)
            _finish(ctx, JobState.FAILED, f"{step.title} failed: {exc}", [*done, step])
            return
        except Exception as exc:
            ctx.log(f"{step.title} raised {type(exc).__name__}: {exc}", LogLevel.ERROR,
                    traceback=traceback.format_exc())
            _finish(ctx, JobState.ERRORED, f"{step.title}: unexpected {type(exc).__name__}: {exc}", [*done, step])
            return
        done.append(step)
    _finish(ctx, JobState.SUCCEEDED, ctx.data.get("result", "done"), [])


def _wait_outside(ctx: JobContext, seconds: float) -> None:
    """Let go of the worker: keep what the steps shared, and queue the message that wakes the job."""
    from jobs.queues import send

    wake = new_owner()
    _set(ctx, owner="", lease_until=None, wake=wake, due_at=timezone.now() + timedelta(seconds=seconds),
         context=ctx.data)
    send(ctx.job, wake=wake, countdown=seconds)


def _finish(ctx: JobContext, state: str, message: str, done: list[Step], *, unstarted: bool = False) -> None:
    """End the job: undo `done` in reverse, or, for a job that never began a step (`unstarted`),
    give back what it reserved."""
    job = ctx.job
    if unstarted:
        release_unstarted(ctx)
    for step in reversed(done):
        if step.undo is None:
            continue
        ctx.log(f"Undoing: {step.title}", LogLevel.WARNING)
        try:
            _undo_with_retries(ctx, step)
        except Exception as exc:  # keep undoing the rest; say loudly what is left behind
            ctx.undo_failures.append(step.title)
            ctx.log(f"Undoing {step.title} failed, clean up by hand: {exc}", LogLevel.ERROR)
    if ctx.undo_failures:
        message += " (undo incomplete: see the log)"
    _set(ctx, state=state, message=message, finished_at=timezone.now(), owner="", lease_until=None, context={})
    retrying(job.reservations.all().delete)  # memory the allocator held for it (vms/placement.py) is free again
    level = {JobState.SUCCEEDED: LogLevel.INFO, JobState.CANCELLED: LogLevel.WARNING}.get(state, LogLevel.ERROR)
    append_log(job, f"Job {state}: {message}", level)
    job_ended(job)


def _undo_with_retries(ctx: JobContext, step: Step) -> None:
    """Undos are idempotent, so one that failed for a passing reason (a host that did not answer,
    a dropped SSH connection: the fault that failed the step often fails its undo too) is tried
    again a few times before anything is left behind."""
    assert step.undo is not None
    for delay in (*UNDO_RETRY_DELAYS_S, None):
        try:
            step.undo(ctx)
            return
        except DriverError as exc:
            if exc.permanent or delay is None:
                raise
            ctx.log(f"Undoing {step.title} failed ({exc}): trying again in {delay:g} s", LogLevel.WARNING)
            time.sleep(delay)


def _note_lost(ctx: JobContext, exc: LeaseLost) -> None:
    """Say in the job's log that its old run came back and stopped (the state is recovery's)."""
    job = ctx.job
    logger.warning("job %s: %s; stopped at step %s without acting", job.pk, exc, job.step)
    try:
        append_log(job, f"Its run on {job.worker or 'a worker'} lost its lease at step {job.step} (recovery ended "
                   "the job, or the heartbeat could not renew it in time): it stopped there without acting",
                   LogLevel.WARNING)
    except IntegrityError:  # recovery wrote the same serial at the same moment: the note can go
        pass
