"""The registry of job kinds: each kind's plan (its steps), its parameters (jobs/params.py), what it
gives back when it ends before its first step, and whether it is high availability's (its own
queue). Kept apart from the runner so that the queues (jobs/queues.py) and the redaction can ask a
kind without importing the runner."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.params import JobParams, NoParams

# A plan takes the job's context (jobs.runner.JobContext) and returns its steps (jobs.runner.Step).
JobPlan = Callable[[Any], list[Any]]


@dataclass(frozen=True)
class JobKind:
    plan: JobPlan
    # What its job carries, checked when the job is written (jobs.services.start_job).
    params: type[JobParams] = NoParams
    # What a job that ends before its first step gives back (cancelled while queued, never taken by
    # a worker): vm.create's reservation. Nothing was done on a host, so it touches only rows.
    release: Callable[[Any], None] | None = None
    # High availability: its own queue and workers (jobs/queues.py), never behind tenant work.
    ha: bool = False
    # A run that dies (its worker killed, its lease run out) is not only ended: a worker undoes its
    # steps from what they recorded (jobs/recovery.py). Its undos must be idempotent and ask the
    # hosts what is there, since the dead run may have stopped anywhere.
    undo_after_loss: bool = False


_KINDS: dict[str, JobKind] = {}


def job_kind(name: str, *, params: type[JobParams] = NoParams, release: Callable[[Any], None] | None = None,
             ha: bool = False, undo_after_loss: bool = False) -> Callable[[JobPlan], JobPlan]:
    def register(plan: JobPlan) -> JobPlan:
        _KINDS[name] = JobKind(plan, params, release, ha, undo_after_loss)
        return plan

    return register


def kind_of(name: str) -> JobKind | None:
    return _KINDS.get(name)


def all_kinds() -> dict[str, JobKind]:
    return dict(_KINDS)


def host_keys() -> frozenset[str]:
    """The names under which the kinds' parameters hold hosts; a job's log data uses the same names
    for the same things (jobs/redaction.py hides what it finds there)."""
    return frozenset(key for kind in _KINDS.values() for key in kind.params.host_fields)
